"""bench/probe_int4_fragment_rows.py's layout against PTX's m16n8k16 register layouts, on the
CPU: each lane's words, read as the kernel reads them, placed where the MMA takes them, give
x @ W^T; a layout off by a row, a column or a nibble fails here."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))

import probe_int4_fragment_rows as frag  # noqa: E402
from runtime_service.model.kernels.quant_linear import int4_linear_reference  # noqa: E402
from runtime_service.model.layers.quantize import pack_int4  # noqa: E402


def emulate_kernel(words, x, scales, zeros, group_size, n):
    """x @ W^T as the kernel computes it from `words`: per slot and MMA m, lane (g, t)'s word m
    gives A registers r = (word >> 4r) & 0x000F000F at row g + 8 (r % 2), k-positions
    2t + 8 (r // 2) + {0, 1}, dequantized with the group of column 16t of the slot; its B
    registers are x's columns 16t + 4m + {0, 1} (k-positions 2t, 2t + 1) and 16t + 4m + {2, 3}
    (2t + 8, 2t + 9) of token g."""
    rb_count, slots = words.shape[:2]
    rows_x, k = x.shape
    x_pad = torch.zeros(rows_x, slots * frag.SLOT)
    x_pad[:, :k] = x.float()
    out = torch.zeros(rows_x, rb_count * frag.ROWS)
    groups = scales.shape[1]
    for rb in range(rb_count):
        for slot in range(slots):
            for m in range(4):
                a = torch.zeros(16, 16)
                b = torch.zeros(16, rows_x)
                for lane in range(32):
                    g, t = lane // 4, lane % 4
                    word = int(words[rb, slot, lane, m]) & 0xFFFFFFFF
                    group = min((slot * frag.SLOT + 16 * t) // group_size, groups - 1)
                    for r in range(4):
                        row = min(rb * 16 + g + 8 * (r % 2), n - 1)
                        v = (word >> (4 * r)) & 0x000F000F
                        for d, q in enumerate((v & 0xF, v >> 16)):
                            a[g + 8 * (r % 2), 2 * t + 8 * (r // 2) + d] = (
                                (q - float(zeros[row, group])) * float(scales[row, group]))
                    base = slot * frag.SLOT + 16 * t + 4 * m
                    b[2 * t:2 * t + 2, :] = x_pad[:, base:base + 2].T
                    b[2 * t + 8:2 * t + 10, :] = x_pad[:, base + 2:base + 4].T
                out[:, rb * 16:rb * 16 + 16] += (a @ b).T
    return out[:, :n]


@pytest.mark.parametrize("n,k,group_size", [(32, 128, 128), (48, 192, 64), (16, 96, 32),
                                            (20, 128, 32)])
def test_packed_words_are_the_mmas_fragments(n, k, group_size):
    g = torch.Generator().manual_seed(n + k)
    codes = torch.randint(0, 16, (n, k), generator=g, dtype=torch.uint8)
    scales = torch.rand(n, k // group_size, generator=g) * 0.1 + 0.01
    zeros = torch.randint(0, 16, (n, k // group_size), generator=g, dtype=torch.uint8)
    x = torch.randn(3, k, generator=g)
    words = frag.pack_fragments(codes)
    assert words.dtype == torch.int32 and words.shape == (-(-n // 16), -(-k // 64), 32, 4)
    want = int4_linear_reference(x, pack_int4(codes), scales, zeros, group_size)
    got = emulate_kernel(words, x, scales, zeros, group_size, n)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_unpack_inverts_pack():
    codes = torch.randint(0, 16, (40, 200), dtype=torch.uint8)
    assert torch.equal(frag.unpack_fragments(frag.pack_fragments(codes), 40, 200), codes)


def test_a_layout_with_two_words_swapped_is_caught():
    g = torch.Generator().manual_seed(7)
    codes = torch.randint(0, 16, (16, 64), generator=g, dtype=torch.uint8)
    scales, zeros = torch.ones(16, 1), torch.zeros(16, 1, dtype=torch.uint8)
    x = torch.randn(2, 64, generator=g)
    words = frag.pack_fragments(codes)
    words[0, 0, 5, [0, 1]] = words[0, 0, 5, [1, 0]]
    want = int4_linear_reference(x, pack_int4(codes), scales, zeros, 64)
    assert not torch.allclose(emulate_kernel(words, x, scales, zeros, 64, 16), want, atol=1e-3)
