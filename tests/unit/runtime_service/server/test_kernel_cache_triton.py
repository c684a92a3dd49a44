"""A real Triton, no GPU: a kernel compiled on one node, packed, and unpacked on a fresh node
(the first node's folder gone) is a cache hit there; nothing compiles again. Triton compiles
for Hopper offline here. Skips without Triton (the CPU CI machines have none)."""

from __future__ import annotations

import shutil

import pytest

triton = pytest.importorskip("triton")

from runtime_service.server import kernel_cache  # noqa: E402


@triton.jit
def _copy_kernel(src, dst, BLOCK: triton.language.constexpr):
    offsets = triton.language.arange(0, BLOCK)
    triton.language.store(dst + offsets, triton.language.load(src + offsets))


def compile_for_hopper() -> kernel_cache.CompileWatch:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    with kernel_cache.CompileWatch() as watch:
        triton.compile(ASTSource(fn=_copy_kernel, signature={"src": "*fp32", "dst": "*fp32",
                                                             "BLOCK": "constexpr"},
                                 constexprs={"BLOCK": 128}),
                       target=GPUTarget("cuda", 90, 32))
    return watch


def test_a_fresh_node_hits_the_kernels_another_node_packed(tmp_path, monkeypatch):
    node1, node2 = tmp_path / "node1", tmp_path / "node2"
    monkeypatch.setenv(kernel_cache.ENV, str(node1))
    assert compile_for_hopper().count == 1
    assert compile_for_hopper().count == 0                 # the same node: a cache hit
    data, packed = kernel_cache.pack(node1)
    assert packed >= 3
    shutil.rmtree(node1)
    assert kernel_cache.unpack(data, node2) == packed
    monkeypatch.setenv(kernel_cache.ENV, str(node2))
    assert compile_for_hopper().count == 0
    assert not node1.exists()                              # found in node2, compiled nowhere
