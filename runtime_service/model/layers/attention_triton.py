"""The CUDA attention backend: Triton paged kernels behind the same call as the reference.

Importing this module needs no triton; the kernels load when the backend is built (on CUDA).
A step whose every query row is a decode row (query length 1) takes the split-K decode kernel;
any other step (prefill, chunked prefill, mixed batches) takes the variable-length prefill kernel,
which handles decode rows too.

Rotary and the cache write are one kernel (`rotary_store_kv_`) wherever the rotary module would
run its Triton kernel: in decode each launch costs about as much as its work, and the fused one
never writes the rotated k back (except for a flash prefill, below). Elsewhere (dynamic NTK,
float32) rotary runs first, then `store_kv`. `fuse_rotary=False` keeps them separate, which the
tests compare against. A decode step goes further: the decode kernel itself rotates q and writes
the new k and v (`paged_decode.NewKV`), one launch a layer instead of two; `decode_stores_kv=False`
keeps the rotary-and-store launch, the path the tests compare with.

`flash_prefill=True` ("triton-flash"): a prefill step of one sequence over an unquantized 16-bit
cache runs its new tokens through torch's fused attention (cuDNN's, or flash) and pages in its
cached context after (kernels/flash_prefill.py); every other step is as above.

"auto" on Hopper does the same for steps of at least `AUTO_FLASH_MIN_ROWS` query rows (a CUDA
graph's rows are its bucket's). Per layer with Llama-3-8B heads on an H200 (bench/NOTES.md, run
20h): 32 against 48 us at 1024 new tokens, 258 against 461 at 4096; but 8.7 against 6.8 at 128,
and 33 against 29 for 512 new tokens after 512 cached, where the paged kernel keeps short steps.
"""

from __future__ import annotations

import torch

from runtime_service.model.layers.attention import AttentionMetadata, TorchReferenceAttention
from runtime_service.model.layers.kv_quant import QuantizedKVCache


# The smallest step "auto" sends through flash prefill, and the GPUs it does so on (measured on
# an H200 only).
AUTO_FLASH_MIN_ROWS = 512
AUTO_FLASH_CAPABILITIES = ((9, 0),)


class TritonPagedAttention:
    name = "triton"

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, device: torch.device,
                 fuse_rotary: bool = True, flash_prefill: bool = False,
                 flash_min_rows: int = 0, decode_stores_kv: bool = True):
        from runtime_service.model.kernels import (attention_configs, kv_store, paged_attention,
                                                   rotary)
        from runtime_service.model.kernels import flash_prefill as flash

        self._kernels = paged_attention
        self._configs = attention_configs
        self._kv_store = kv_store
        self._rotary_kernels = rotary
        self._flash = flash
        self.fuse_rotary = fuse_rotary
        self.decode_stores_kv = decode_stores_kv
        device = torch.device(device)
        if flash_prefill and (torch.cuda.get_device_capability(device) < (8, 0)
                              or head_dim % 8 or head_dim > 256):
            raise ValueError(f"flash prefill needs an Ampere or newer GPU and a head dimension "
                             f"that is a multiple of 8 up to 256 (got {head_dim})")
        self.flash_prefill = flash_prefill
        self.flash_min_rows = flash_min_rows
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = head_dim ** -0.5
        self.num_sms = torch.cuda.get_device_properties(device).multi_processor_count

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                 v_cache: torch.Tensor, meta: AttentionMetadata, rotary) -> torch.Tensor:
        kernels = self._kernels
        # An INT8 / FP8 cache hands the kernels its codes and the per-token scales beside them.
        scales = {}
        if isinstance(k_cache, QuantizedKVCache):
            scales = {"k_scale": k_cache.scales, "v_scale": v_cache.scales}
            k_cache, v_cache = k_cache.codes, v_cache.codes
        # One sequence's prefill: flash reads its own keys from k, so they are rotated in place.
        flash = (self.flash_prefill and not scales and meta.num_seqs == 1 and not meta.is_decode
                 and q.dtype in self._flash.FLASH_DTYPES and q.shape[0] >= self.flash_min_rows)
        table = rotary.kernel_cos_sin(q) if self.fuse_rotary else None
        if meta.is_decode and table is not None and self.decode_stores_kv:
            return self._decode(q, k_cache, v_cache, meta, scales,
                                self._kernels.NewKV(k, v, meta.positions, meta.slot_mapping,
                                                    *table))
        if table is not None:
            self._rotary_kernels.rotary_store_kv_(q, k, v, k_cache, v_cache, meta.positions,
                                                  meta.slot_mapping, *table, **scales,
                                                  rotate_k=flash)
        else:
            q, k = rotary(meta.positions, q, k, meta.token_seq_lens)
            self._kv_store.store_kv(k, v, k_cache, v_cache, meta.slot_mapping, **scales)
        if meta.is_decode:
            return self._decode(q, k_cache, v_cache, meta, scales)
        if flash:
            return self._flash.flash_prefill(q, k, v, k_cache, v_cache, meta.block_tables,
                                             meta.query_start, meta.seq_lens,
                                             max(meta.query_lens_host), self.scale)
        return kernels.prefill(q, k_cache, v_cache, meta.block_tables, meta.query_start,
                               meta.seq_lens, max(meta.query_lens_host), self.scale, **scales)

    def _decode(self, q, k_cache, v_cache, meta: AttentionMetadata, scales: dict,
                new_kv=None) -> torch.Tensor:
        max_context = meta.block_tables.shape[1] * meta.block_size
        splits = self._configs.decode_num_splits(q.shape[0], self.num_kv_heads, max_context,
                                                 self.num_sms)
        return self._kernels.decode(q, k_cache, v_cache, meta.block_tables, meta.seq_lens,
                                    self.scale, splits, **scales, new_kv=new_kv)


def make_attention_backend(name: str, num_heads: int, num_kv_heads: int, head_dim: int,
                           device: torch.device):
    """"torch", "triton", "triton-flash" (triton, with flash for one sequence's prefill), or
    "auto" (triton on CUDA when installed, with flash for one sequence's prefill of at least
    AUTO_FLASH_MIN_ROWS rows on Hopper; else the torch reference)."""
    from runtime_service.model import kernels

    device = torch.device(device)
    if name == "auto":
        if device.type != "cuda" or not kernels.triton_installed():
            return TorchReferenceAttention(num_heads, num_kv_heads, head_dim)
        flash = auto_uses_flash(torch.cuda.get_device_capability(device), head_dim)
        return TritonPagedAttention(num_heads, num_kv_heads, head_dim, device,
                                    flash_prefill=flash, flash_min_rows=AUTO_FLASH_MIN_ROWS)
    if name == "torch":
        return TorchReferenceAttention(num_heads, num_kv_heads, head_dim)
    if name in ("triton", "triton-flash"):
        if device.type != "cuda" or not kernels.triton_installed():
            raise ValueError(f"the {name} attention backend needs a CUDA device and triton")
        return TritonPagedAttention(num_heads, num_kv_heads, head_dim, device,
                                    flash_prefill=name == "triton-flash")
    raise ValueError(f"attention backend must be 'auto', 'torch', 'triton' or 'triton-flash', "
                     f"got {name!r}")


def auto_uses_flash(capability: tuple[int, int], head_dim: int) -> bool:
    """Whether "auto" sends long single-sequence prefills through flash on this GPU."""
    return tuple(capability) in AUTO_FLASH_CAPABILITIES and head_dim % 8 == 0 and head_dim <= 256
