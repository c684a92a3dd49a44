"""The peers of bench_quant_quality.py: llmcompressor's FP8_DYNAMIC, and its int4
round-to-nearest, AWQ and GPTQ run on the calibration windows Kiln's own AWQ uses, each saved as
a compressed-tensors checkpoint.

llmcompressor 0.14 pins transformers <= 5.17, older than Kiln's, so this script runs in its own
environment (`make peer-venv`, .venv-peer) and imports nothing from Kiln: bench_quant_quality.py
hands it the model folder and the token windows as JSON, and scores what it writes with Kiln's
prompt log-probabilities, the same scorer as Kiln's own rows. `score` computes the same
perplexity through transformers in this environment, a cross-check that Kiln reads the
checkpoint as its authors' library does.

    .venv-peer/bin/python bench/peer_llmcompressor.py quantize --scheme awq --group-size 64 \
        --model-dir MODEL --calib windows.json --out folder
    .venv-peer/bin/python bench/peer_llmcompressor.py score --model-dir folder --windows w.json \
        --attention sdpa
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

SCHEMES = ("fp8", "rtn", "awq", "gptq")
CALIBRATED = ("awq", "gptq")


def weight_scheme(group_size: int) -> dict:
    """Kiln's int4 settings: 4-bit integers in groups along the input, with zero points."""
    return {"group_0": {"targets": ["Linear"], "weights": {
        "num_bits": 4, "type": "int", "strategy": "group", "group_size": group_size,
        "symmetric": False, "dynamic": False}}}


def recipe(scheme: str, group_size: int) -> list:
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
    if scheme == "fp8":        # e4m3 weights per channel, activations per token at run time
        return [QuantizationModifier(scheme="FP8_DYNAMIC", targets=["Linear"],
                                     ignore=["lm_head"])]
    groups = weight_scheme(group_size)
    if scheme == "gptq":
        return [GPTQModifier(config_groups=groups, ignore=["lm_head"])]
    quantize = QuantizationModifier(config_groups=groups, ignore=["lm_head"])
    if scheme == "rtn":
        return [quantize]
    from llmcompressor.modifiers.transform.awq import AWQModifier
    return [AWQModifier(), quantize]


def allow_cpu_only() -> None:
    """llmcompressor 0.14's AWQ pins its cached activations for host-to-device copies, which
    raises "Cannot access accelerator device" on a machine without one; with no device there
    is nothing to copy, so the pin is skipped there."""
    import torch
    if torch.cuda.is_available():
        return
    from llmcompressor.pipelines.cache import IntermediatesCache
    IntermediatesCache.pin_memory = lambda self, *args, **kwargs: None


def quantize(args) -> None:
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer
    allow_cpu_only()
    windows = json.loads(Path(args.calib).read_text()) if args.calib else []
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    started = time.perf_counter()
    kwargs = {}
    if args.scheme in CALIBRATED:
        kwargs = dict(dataset=Dataset.from_dict({
            "input_ids": windows, "attention_mask": [[1] * len(w) for w in windows]}),
            num_calibration_samples=len(windows), max_seq_length=max(map(len, windows)),
            shuffle_calibration_samples=False)
    oneshot(model=model, tokenizer=tokenizer, recipe=recipe(args.scheme, args.group_size),
            **kwargs)
    seconds = time.perf_counter() - started
    out = Path(args.out)
    model.save_pretrained(str(out), save_compressed=True)
    tokenizer.save_pretrained(str(out))
    print(json.dumps({"scheme": args.scheme, "group_size": args.group_size,
                      "calibration_windows": len(windows), "seconds": seconds}))


def score(args) -> None:
    """Perplexity of the windows, each window's tokens after the first, as Kiln scores them."""
    import torch
    from transformers import AutoModelForCausalLM
    windows = json.loads(Path(args.windows).read_text())
    model = AutoModelForCausalLM.from_pretrained(
        args.model_dir, dtype=torch.float32, attn_implementation=args.attention).eval()
    started = time.perf_counter()
    nll, count = 0.0, 0
    with torch.inference_mode():
        for window in windows:
            ids = torch.tensor([window])
            logits = model(ids).logits[0, :-1].float()
            nll += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
            count += len(window) - 1
    print(json.dumps({"perplexity": math.exp(nll / count), "scored_tokens": count,
                      "seconds": time.perf_counter() - started}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    q = commands.add_parser("quantize")
    q.add_argument("--scheme", choices=SCHEMES, required=True)
    q.add_argument("--group-size", type=int, default=64)
    q.add_argument("--model-dir", required=True)
    q.add_argument("--calib", help="JSON list of token-id windows (for awq and gptq)")
    q.add_argument("--out", required=True)
    s = commands.add_parser("score")
    s.add_argument("--model-dir", required=True)
    s.add_argument("--windows", required=True)
    s.add_argument("--attention", choices=("sdpa", "eager"), default="sdpa")
    args = parser.parse_args()
    if args.command == "quantize" and args.scheme in CALIBRATED and not args.calib:
        sys.exit(f"--scheme {args.scheme} calibrates: give --calib")
    (quantize if args.command == "quantize" else score)(args)


if __name__ == "__main__":
    main()
