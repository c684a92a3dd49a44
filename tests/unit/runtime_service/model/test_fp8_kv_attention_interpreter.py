"""Paged attention over an fp8 KV cache under a bf16 query, on Triton's interpreter: the products
run in fp16 (kv_read.fp16_query), which must hold any query row (here past fp16's
range, 1e5) and any value scale (here values of 1e-4, whose weights would fall below fp16's
normal range unscaled), and match the reference over the same dequantized cache to bf16
rounding, in decode (one and two splits) and in prefill with a cached context. The GPU runs
the same through tests/gpu/test_kv_quant_kernels.py."""

from __future__ import annotations

from support.triton_interpreter import needs_triton, run_on_interpreter

_CHECK = r"""
import torch
from support.block_tables import consecutive_block_tables
from runtime_service.model.kernels import paged_attention as pa
from runtime_service.model.kernels.kv_quant import quantize_kv_reference

g = torch.Generator().manual_seed(0)
heads, kv_heads, head_dim, block_size = 8, 2, 64, 16
seq_lens = [1, 17, 70]
tables, used = consecutive_block_tables(seq_lens, block_size)
shape = (used + 2, block_size, kv_heads, head_dim)
lens = torch.tensor(seq_lens, dtype=torch.int32)
scale = head_dim ** -0.5


def rel_err(out, ref):
    assert not out.isnan().any() and not out.isinf().any()
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


for q_size, kv_size in ((1.0, 1.0), (1e5, 1.0), (1.0, 1e-4)):
    k, v = ((torch.randn(shape, generator=g) * kv_size).to(torch.bfloat16) for _ in range(2))
    (k_q, k_scale), (v_q, v_scale) = (quantize_kv_reference(t, torch.float8_e4m3fn)
                                      for t in (k, v))
    assert pa.fp8_as_fp16(torch.zeros(1, dtype=torch.bfloat16), k_q)
    # keys scaled down with the query: scores of order 1, so the softmax is not one-hot
    k_scale = k_scale / q_size
    q = (torch.randn(3, heads, head_dim, generator=g) * q_size).to(torch.bfloat16)
    ref = pa.decode_reference(q, k_q, v_q, tables, lens, scale, k_scale, v_scale)
    for splits in (1, 2):
        out = pa.decode(q, k_q, v_q, tables, lens, scale, splits, k_scale=k_scale,
                        v_scale=v_scale)
        assert rel_err(out, ref) < 1e-2, (q_size, kv_size, splits, rel_err(out, ref))
    query_lens = [1, 5, 64]
    starts = torch.tensor([0, 1, 6, 70], dtype=torch.int32)
    q = (torch.randn(70, heads, head_dim, generator=g) * q_size).to(torch.bfloat16)
    out = pa.prefill(q, k_q, v_q, tables, starts, lens, max(query_lens), scale,
                     k_scale=k_scale, v_scale=v_scale)
    ref = pa.prefill_reference(q, k_q, v_q, tables, starts, lens, scale, k_scale, v_scale)
    assert rel_err(out, ref) < 1e-2, (q_size, kv_size, "prefill", rel_err(out, ref))
print("ok")
"""


@needs_triton
def test_fp8_cache_attention_in_fp16_holds_any_query_and_value_scale():
    assert run_on_interpreter(_CHECK).strip() == "ok"
