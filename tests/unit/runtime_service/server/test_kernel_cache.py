"""Compiled kernels shared through the store: only plain kernel files travel (never host code),
an archive that is anything else is refused whole, and the store's archive is never replaced."""

import io
import json
import os
import shutil
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from runtime_service.server import kernel_cache
from runtime_service.server.kernel_cache import (KernelArchiveError, SharedKernels, pack,
                                                 pod_kernel_folder, unpack)
from runtime_service.store import LocalStore

KERNEL_FILES = {"QWERTY234/__grp___gemv_kernel.json": b'{"child_paths": {}}',
                "QWERTY234/_gemv_kernel.cubin": b"\x7fELF cubin",
                "QWERTY234/_gemv_kernel.json": b'{"name": "_gemv_kernel"}',
                "ASDF567/_rms_norm_kernel.ptx": b".version 8.7"}


def triton_folder(root):
    """A Triton cache as a fresh node leaves it: kernels, a launcher, an unfinished write."""
    for name, content in KERNEL_FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    (root / "LAUNCH89" / "__triton_launcher.so").parent.mkdir(parents=True)
    (root / "LAUNCH89" / "__triton_launcher.so").write_bytes(b"\x7fELF host code")
    (root / "tmp.pid_7_abc").mkdir()
    (root / "tmp.pid_7_abc" / "_half.json").write_bytes(b"{")
    os.symlink("/etc/passwd", root / "QWERTY234" / "link.json")
    return root


def files_in(root):
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in root.rglob("*") if p.is_file() and not p.is_symlink()}


def archive_of(members):
    """A gzip tar of (TarInfo fields, content) pairs, for archives a pod must refuse."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, content, kind in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.SYMTYPE:
                info.linkname = "/etc/passwd"
            info.size = len(content) if kind == tarfile.REGTYPE else 0
            archive.addfile(info, io.BytesIO(content) if kind == tarfile.REGTYPE else None)
    return buffer.getvalue()


def test_the_pod_points_triton_into_its_cache_unless_told_otherwise(tmp_path, monkeypatch):
    monkeypatch.setenv(kernel_cache.ENV, "")
    assert pod_kernel_folder(tmp_path / "cache") == tmp_path / "cache" / "kernels" / "triton"
    assert os.environ[kernel_cache.ENV] == str(tmp_path / "cache" / "kernels" / "triton")
    monkeypatch.setenv(kernel_cache.ENV, "/var/cache/kiln-kernels")     # the chart's hostPath
    assert pod_kernel_folder(tmp_path / "cache") == Path("/var/cache/kiln-kernels")


def test_only_kernel_files_are_packed_and_they_unpack_as_they_were(tmp_path):
    data, count = pack(triton_folder(tmp_path / "node1"))
    assert count == len(KERNEL_FILES)
    assert unpack(data, tmp_path / "node2") == len(KERNEL_FILES)
    assert files_in(tmp_path / "node2") == KERNEL_FILES        # no launcher, link or partial


@pytest.mark.parametrize("members", [
    [("../outside.json", b"x", tarfile.REGTYPE)],
    [("/etc/cron.d/kiln", b"x", tarfile.REGTYPE)],
    [("A/B/deep.json", b"x", tarfile.REGTYPE)],
    [("ABC/link.json", b"", tarfile.SYMTYPE)],
    [("ABC/dev", b"", tarfile.CHRTYPE)],
    [("ABC/ok.json", b"{}", tarfile.REGTYPE), ("ABC/__triton_launcher.so", b"x", tarfile.REGTYPE)],
], ids=["parent", "absolute", "nested", "symlink", "device", "host-code"])
def test_an_archive_with_anything_but_kernel_files_is_refused_whole(tmp_path, members):
    with pytest.raises(KernelArchiveError):
        unpack(archive_of(members), tmp_path / "node")
    assert not (tmp_path / "node").exists() and not (tmp_path / "outside.json").exists()


def test_archives_past_the_limits_or_unreadable_are_refused(tmp_path, monkeypatch):
    data, _ = pack(triton_folder(tmp_path / "node1"))
    monkeypatch.setattr(kernel_cache, "MAX_FILES", 2)
    with pytest.raises(KernelArchiveError, match="over 2 files"):
        unpack(data, tmp_path / "node2")
    monkeypatch.setattr(kernel_cache, "MAX_FILES", 100)
    monkeypatch.setattr(kernel_cache, "MAX_BYTES", 10)
    with pytest.raises(KernelArchiveError, match="bytes"):
        unpack(data, tmp_path / "node2")
    with pytest.raises(KernelArchiveError, match="not a readable"):
        unpack(b"not a tar at all", tmp_path / "node2")
    assert not (tmp_path / "node2").exists()


def shared(folder, store):
    return SharedKernels(folder, store, "NVIDIA H200 sm90", "3.6.0")


def test_a_second_node_takes_the_first_nodes_kernels_from_the_store(tmp_path):
    store = LocalStore(tmp_path / "store")
    first = shared(triton_folder(tmp_path / "node1"), store)
    assert first.store_key == "startup/nvidia-h200-sm90-kernels-triton-3.6.0.tar.gz"
    assert first.share() is True
    assert first.share() is False                      # there already: never replaced
    second = shared(tmp_path / "node2", store)
    assert second.restore() == len(KERNEL_FILES)
    assert files_in(tmp_path / "node2") == KERNEL_FILES
    assert second.restore() == 0                       # a folder with kernels is left alone


def test_a_damaged_or_missing_archive_restores_nothing_and_the_pod_goes_on(tmp_path):
    store = LocalStore(tmp_path / "store")
    node = shared(tmp_path / "node", store)
    assert node.restore() == 0                         # nothing shared yet
    store.put_bytes(node.store_key, b"garbage")
    assert node.restore() == 0
    assert not (tmp_path / "node").exists()


def test_a_folder_without_kernels_shares_nothing(tmp_path):
    store = LocalStore(tmp_path / "store")
    (tmp_path / "empty").mkdir()
    assert shared(tmp_path / "empty", store).share() is False
    assert store.stat(shared(tmp_path / "empty", store).store_key) is None


def test_a_folder_past_the_limits_is_not_shared(tmp_path, monkeypatch):
    store = LocalStore(tmp_path / "store")
    monkeypatch.setattr(kernel_cache, "MAX_FILES", 2)
    node = shared(triton_folder(tmp_path / "node"), store)
    assert node.share() is False
    assert store.stat(node.store_key) is None


class _SlowStore(LocalStore):
    """A store whose writes wait for `release`, as a large archive's upload does."""

    def __init__(self, root, release):
        super().__init__(root)
        self.release = release

    def put_bytes_if_absent(self, key, data):
        self.release.wait(10)
        return super().put_bytes_if_absent(key, data)


def test_a_stopping_process_waits_for_its_share_so_the_next_pod_finds_the_kernels(tmp_path):
    """Run 17 on the H200: a pod stopped right after SERVING had its packing thread killed, and
    the next node compiled everything again."""
    import threading

    release = threading.Event()
    store = _SlowStore(tmp_path / "store", release)
    first = shared(triton_folder(tmp_path / "node1"), store)
    thread = kernel_cache.share_in_background(first)
    assert kernel_cache.finish_sharing(timeout_s=0.05) is False     # still writing: gave up
    assert thread.is_alive() and store.stat(first.store_key) is None
    release.set()
    assert kernel_cache.finish_sharing() is True
    assert not thread.is_alive()
    assert shared(tmp_path / "node2", store).restore() == len(KERNEL_FILES)
    assert kernel_cache.finish_sharing(timeout_s=0.0) is True        # nothing left to wait for


def test_group_files_point_into_the_unpacking_nodes_folder(tmp_path):
    """Triton's group file names its kernel's files by absolute path on the node that compiled
    them; a node that unpacks the archive must find them in its own folder."""
    old = triton_folder(tmp_path / "node1")
    (old / "QWERTY234" / "__grp___gemv_kernel.json").write_text(json.dumps({"child_paths": {
        name: str(old / "QWERTY234" / name) for name in ("_gemv_kernel.cubin",
                                                           "_gemv_kernel.json")}}))
    data, _ = pack(old)
    shutil.rmtree(old)                                     # a fresh node has no node1 folder
    unpack(data, tmp_path / "node2")
    group = json.loads((tmp_path / "node2" / "QWERTY234" / "__grp___gemv_kernel.json")
                       .read_text())["child_paths"]
    assert group == {name: str((tmp_path / "node2").resolve() / "QWERTY234" / name)
                     for name in ("_gemv_kernel.cubin", "_gemv_kernel.json")}
    assert all(Path(path).is_file() for path in group.values())


@pytest.mark.parametrize("group", [
    b"{", b'{"child_paths": 7}', b'{"no_children": {}}', b"[" * 100000 + b"]" * 100000,
    json.dumps({"child_paths": {"../../etc/passwd": "/etc/passwd"}}).encode(),
    json.dumps({"child_paths": {"missing.cubin": "/x/missing.cubin"}}).encode()])
def test_a_group_file_naming_anything_but_its_neighbours_refuses_the_archive(tmp_path, group):
    data = archive_of([("QWERTY234/_gemv_kernel.cubin", b"\x7fELF", tarfile.REGTYPE),
                       ("QWERTY234/__grp___gemv_kernel.json", group, tarfile.REGTYPE)])
    with pytest.raises(KernelArchiveError):
        unpack(data, tmp_path / "node2")
    assert not (tmp_path / "node2").exists() or files_in(tmp_path / "node2") == {}


def test_a_start_counts_what_triton_compiled_and_not_its_cache_hits(monkeypatch):
    compilation = SimpleNamespace(listener=None)
    monkeypatch.setitem(sys.modules, "triton", SimpleNamespace(
        knobs=SimpleNamespace(compilation=compilation)))
    earlier = []
    compilation.listener = lambda **heard: earlier.append(heard["cache_hit"])

    def triton_compiles(name, cache_hit):
        compilation.listener(src=None, metadata={"name": name}, metadata_group={}, times=None,
                             cache_hit=cache_hit)

    with kernel_cache.CompileWatch() as watch:
        for name, hit in [("_gemv_kernel", False), ("_rms_norm_kernel", True),
                          ("_gemv_kernel", False), ("_silu_mul_kernel", False)]:
            triton_compiles(name, hit)
    assert watch.count == 3
    assert watch.describe() == "_gemv_kernel x2, _silu_mul_kernel x1"
    assert earlier == [False, True, False, False]          # a listener already set still hears
    triton_compiles("_after", False)
    assert watch.count == 3 and len(earlier) == 5          # and it is back in place


def test_the_host_launchers_this_node_built_are_counted(tmp_path, monkeypatch):
    monkeypatch.delenv(kernel_cache.ENV, raising=False)
    assert kernel_cache.host_launchers() == frozenset()
    monkeypatch.setenv(kernel_cache.ENV, str(triton_folder(tmp_path / "triton")))
    assert kernel_cache.host_launchers() == {"LAUNCH89/__triton_launcher.so"}
