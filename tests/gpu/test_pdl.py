"""Programmatic dependent launch (kernels/pdl.py, KILN_PDL=1) changes when kernels launch, never
what they compute: an engine gives the same tokens and the same log-probabilities, bit for bit,
with it off, on, and on with the next kernel launched as each one starts (KILN_PDL_TRIGGER), through its decode and prefill CUDA graphs, its GEMV tuning and, for the
quantized engines, the fp8 kernels that sum their K splits through arrival counters.

The setting is read when the kernels are imported, so each side runs in a process of its own;
the second takes the first's GEMV tuning (timings differ run to run, and another tile would sum
in another order), and each batch is queued whole before its executor's loop starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpu.tiers import LONG
from support.engine_logits import local_builder
from support.random_llama import make_random_llama, random_prompts

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability() < (9, 0),
    reason="programmatic dependent launch needs sm_90 or newer")]

REPO = Path(__file__).resolve().parents[2]
GENERATE = """
import json, sys
from pathlib import Path
import torch
from runtime_service.engine.executor import Executor, ExecutorOptions
from runtime_service.engine.request import Request, SamplingParams
from runtime_service.model import kernel_tuning
from runtime_service.model.kernels import pdl
folder, batches, tuning = sys.argv[1], json.loads(sys.argv[2]), Path(sys.argv[3])
device = torch.device("cuda", 0)
if tuning.exists():                 # the other side's choices: the same tiles, the same sums
    kernel_tuning.import_tuning(device, json.loads(tuning.read_text()))
outputs, graphs = [], []
params = SamplingParams(max_new_tokens=12, min_new_tokens=12, end_id=-1, logprobs=True)
for prompts in batches:
    # every request waits in the inbox before the loop starts: one batch composition each time
    executor = Executor.from_folder(folder, ExecutorOptions(
        device="cuda", dtype="bfloat16", block_size=16, max_num_tokens=256,
        cuda_graph_max_batch_size=8, load_tokenizer=False, warm_up_largest_step=False))
    streams = [executor.submit(Request(f"r{i}", p, params)) for i, p in enumerate(prompts)]
    executor.start()
    outputs.append([[(t, lp) for o in s for t, lp in zip(o.new_token_ids, o.new_logprobs)]
                    for s in streams])
    graphs.append(executor.runner.graphs is not None)
    executor.shutdown()
if not tuning.exists():
    tuning.write_text(json.dumps(kernel_tuning.export_tuning(device)))
print(json.dumps({"pdl": [pdl.ENABLED, pdl.TRIGGER], "graphs": all(graphs),
                  "outputs": outputs}))
"""


def _generate(folder: Path, batches, pdl: str, trigger: str, tuning: Path) -> dict:
    env = {**os.environ, "KILN_PDL": pdl, "KILN_PDL_TRIGGER": trigger,
           "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "sdk"),
                                          os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", GENERATE, str(folder), json.dumps(batches),
                           str(tuning)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _assert_same_with_and_without(folder: Path) -> None:
    # one prompt alone (the batch-1 graphs), then eight together (decode graphs of 8; 150
    # tokens take a prefill graph, 3 a short one)
    prompts = random_prompts((3, 150, 40, 7, 64, 1, 90, 17), vocab_size=320)
    batches = [prompts[:1], prompts]
    tuning = folder.parent / "tuning.json"      # written by the first run, read by the second
    off = _generate(folder, batches, "0", "exit", tuning)
    on = _generate(folder, batches, "1", "exit", tuning)
    at_start = _generate(folder, batches, "1", "start", tuning)
    assert (off["pdl"], on["pdl"], at_start["pdl"]) == ([False, "exit"], [True, "exit"],
                                                         [True, "start"])
    assert on["graphs"] and at_start["graphs"]
    assert len(on["outputs"][1]) == 8 and all(len(out) == 12 for out in on["outputs"][1])
    assert on["outputs"] == off["outputs"] == at_start["outputs"]


@LONG           # three engine processes each; `bash bench/gpu_session.sh tests` runs them
def test_a_bf16_engine_computes_the_same_bits_with_pdl(tmp_path):
    _assert_same_with_and_without(make_random_llama(tmp_path / "hf", hidden_size=256,
                                                    intermediate_size=512, num_hidden_layers=2,
                                                    num_attention_heads=8, num_key_value_heads=2))


@LONG
@pytest.mark.parametrize("algo, kv", [("FP8", "fp8"), ("W4A16", "auto")])
def test_a_quantized_engine_computes_the_same_bits_with_pdl(tmp_path, algo, kv):
    from builder_service.settings import BuildSpec
    from runtime_service.format.engine_config import QuantConfig
    hf = make_random_llama(tmp_path / "hf", hidden_size=256, intermediate_size=512,
                           num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2)
    builder = local_builder(tmp_path)
    key = builder.build(BuildSpec(source=str(hf), dtype="bfloat16", quant=QuantConfig(
        algo=algo, group_size=128, kv_cache_dtype=kv))).engine.engine_key
    _assert_same_with_and_without(tmp_path / "store" / "engines" / key)
