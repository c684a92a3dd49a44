"""Log-probabilities over the wire: output, top-n alternatives and the prompt's, as transformers."""

from __future__ import annotations

import torch


def test_output_top_and_prompt_logprobs_equal_transformers(llm, tiny_model):
    from transformers import LlamaForCausalLM

    prompt = [32, 12, 7, 99, 5]
    sampling_config = llm.get_default_sampling_config()
    sampling_config.max_new_tokens = 3
    sampling_config.ignore_eos = True
    sampling_config.return_log_probs = True
    sampling_config.top_logprobs = 3
    sampling_config.return_prompt_logprobs = True
    result = llm.generate([prompt], sampling_config=sampling_config)[0]
    output = result.outputs[0]
    model = LlamaForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32).eval()
    with torch.no_grad():
        log_probs = model(torch.tensor([prompt + output.token_ids])).logits[0].log_softmax(-1)
    expected_prompt = log_probs[torch.arange(4), torch.tensor(prompt[1:])]
    assert torch.allclose(torch.tensor(result.prompt_logprobs), expected_prompt, atol=1e-3)
    assert len(output.top_logprobs) == 3
    for position, (token, top) in enumerate(zip(output.token_ids, output.top_logprobs)):
        values, ids = log_probs[len(prompt) - 1 + position].topk(3)
        assert [t for t, _ in top] == ids.tolist() and top[0][0] == token
        assert torch.allclose(torch.tensor([v for _, v in top]), values, atol=1e-3)
        assert abs(output.logprobs[position] - top[0][1]) < 1e-5
