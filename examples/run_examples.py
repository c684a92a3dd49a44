"""Runs groups of llm_examples.py tasks, as the HLAPI README shows.

    python3 ./run_examples.py run_single_gpu --model_dir <llama-model-path>
    python3 ./run_examples.py run_multi_gpu --model_dir <llama-model-path>
    python3 ./run_examples.py run_quant --model_dir <llama-model-path>
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent / "llm_examples.py"

GROUPS = {
    "run_single_gpu": [["run_llm_from_huggingface_model"], ["run_llm_from_tllm_engine"],
                       ["run_llm_generate_async_example"], ["run_llm_with_async_future"],
                       ["run_llm_with_token_ids"], ["run_llm_with_runtime_customization"],
                       ["run_llm_with_beam_search"]],
    "run_multi_gpu": [["run_llm_on_tensor_parallel", "--tp_size", "{tp_size}"],
                      ["run_llm_with_auto_parallel"]],
    "run_quant": [["run_llm_with_quantization", "--quant_type", "int4_awq",
                   "--group_size", "{group_size}"],
                  ["run_llm_with_quantization", "--quant_type", "fp8"]],
}


def tensor_parallel_size(model_dir: str) -> int:
    """2 as in the HLAPI example, or the smallest split the model's KV heads allow (SmolLM2's
    3 KV heads split in 3)."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    model = config.get("model", config)                      # a Kiln engine nests it
    kv_heads = model.get("num_key_value_heads") or model.get("num_kv_heads") or 2
    return next(n for n in range(2, kv_heads + 1) if kv_heads % n == 0) if kv_heads > 1 else 1


def int4_group_size(model_dir: str) -> int:
    """128 as in the HLAPI example, or the largest int4 group that divides every linear's input
    width (SmolLM2's rows are 576 wide: 64); Kiln refuses a group that does not divide them."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    model = config.get("model", config)                      # a Kiln engine nests it
    hidden = model["hidden_size"]
    heads = model.get("num_attention_heads") or model["num_heads"]
    widths = (hidden, heads * (model.get("head_dim") or hidden // heads),
              model["intermediate_size"])
    return next((g for g in (128, 64, 32) if all(w % g == 0 for w in widths)), 128)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("group", choices=sorted(GROUPS))
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--max_new_tokens", default="16")
    parser.add_argument("--only", help="run just this task of the group")
    args = parser.parse_args(argv)
    failed = 0
    for task, *extra in GROUPS[args.group]:
        if args.only and task != args.only:
            continue
        extra = [a.format(tp_size=tensor_parallel_size(args.model_dir),
                          group_size=int4_group_size(args.model_dir)) for a in extra]
        code = subprocess.call([sys.executable, str(EXAMPLES), "--task", task, "--model_dir",
                                args.model_dir, "--max_new_tokens", args.max_new_tokens, *extra])
        failed += code != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
