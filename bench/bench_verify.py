"""Checking an engine folder's sha256 digests: by parts on every core (Kiln now), against the
whole file as one stream (Kiln before, and what a manifest without parts still gets) and
coreutils `sha256sum` (the peer), on the same file, page cache warm, medians of --repeats.

    python bench/bench_verify.py --gib 2 --json bench/results/verify.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench_common import git_commit

from runtime_service.format.engine_format import (CONFIG, MANIFEST, build_manifest,
                                                  verify_engine_folder, write_manifest)


def make_engine(folder: Path, size_bytes: int) -> Path:
    (folder / CONFIG).write_text('{"format": "kiln-engine"}')
    with open(folder / "rank0.safetensors", "wb") as handle:
        left = size_bytes
        while left:
            chunk = os.urandom(min(left, 64 << 20))
            handle.write(chunk)
            left -= len(chunk)
    write_manifest(folder, build_manifest(folder, "bench", "bench"))
    return folder


def without_parts(folder: Path) -> None:
    data = json.loads((folder / MANIFEST).read_text())
    for entry in data["files"]:
        entry.pop("part_bytes", None)
        entry.pop("part_sha256", None)
    (folder / MANIFEST).write_text(json.dumps(data))


def timed(run, repeats: int) -> dict:
    run()                                           # page cache warm, as on a pod's second look
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    return {"median_s": statistics.median(seconds), "runs_s": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0, help="size of the rank file")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    size = int(args.gib * (1 << 30))
    work = Path(tempfile.mkdtemp(prefix="kiln-verify-"))
    try:
        folder = make_engine(work, size)
        report = {"commit": git_commit(), "host": platform.node(), "cpus": os.cpu_count(),
                  "file_bytes": size}
        report["kiln_parts"] = timed(lambda: verify_engine_folder(folder), args.repeats)
        sha256sum = shutil.which("sha256sum")
        if sha256sum:
            report["sha256sum"] = timed(lambda: subprocess.run(
                [sha256sum, str(folder / "rank0.safetensors")], check=True,
                capture_output=True), args.repeats)
        without_parts(folder)
        report["kiln_whole_file"] = timed(lambda: verify_engine_folder(folder), args.repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"verify a {size / (1 << 30):.1f} GiB rank file on {report['cpus']} CPUs, median of "
          f"{args.repeats}:")
    for name in ("kiln_parts", "kiln_whole_file", "sha256sum"):
        if name in report:
            median = report[name]["median_s"]
            print(f"  {name:16s} {median:6.2f} s  {size / median / 1e9:5.2f} GB/s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
