"""Publish and pull throughput of Kiln's S3 store against a plain minio-client upload/download of
the same bytes, on loopback against `rclone serve s3`.

Kiln publish = upload every file (parallel, multipart) + manifest last.
Kiln pull    = parallel ranged reads + sha256 of every file + atomic move into the cache.
Plain        = minio `fput_object` / `fget_object` one file after another, no verification.
Plain parallel = minio `fget_object` of every object at once, one thread per object: how a
               minio user downloads a folder in parallel, with no verification.
Plain ranged   = minio ranged `get_object`s of Kiln's chunk size on as many threads as Kiln's
               pull, written in place: Kiln's own transfer with no sha256 at all, so this ratio
               is what verification costs where the CPU, not the network, is the limit.

Usage: python bench/bench_store.py [--size-mb 512] [--files 4] [--repeats 3] [--workers 16]
       [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from runtime_service.format.engine_format import build_manifest, write_manifest
from runtime_service.store import S3Settings, open_store, pull_engine
from runtime_service.store.download import DEFAULT_CHUNK_BYTES
from runtime_service.store.s3 import make_client

BUCKET = "bench"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_rclone(root: Path) -> tuple[subprocess.Popen, S3Settings]:
    (root / BUCKET).mkdir(parents=True)
    port = free_port()
    access, secret = f"benchaccess{secrets.token_hex(4)}", f"benchsecret{secrets.token_hex(8)}"
    rclone = Path(sys.executable).parent / "rclone"
    proc = subprocess.Popen([str(rclone if rclone.exists() else "rclone"), "serve", "s3",
                             "--auth-key", f"{access},{secret}", "--addr", f"127.0.0.1:{port}",
                             str(root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, S3Settings(endpoint=f"127.0.0.1:{port}", access_key=access, secret_key=secret)


def make_engine(folder: Path, size_mb: int, files: int, key: str) -> int:
    folder.mkdir(parents=True)
    per_file = size_mb * (1 << 20) // files
    for rank in range(files):
        with open(folder / f"rank{rank}.safetensors", "wb") as handle:
            for _ in range(per_file // (1 << 20)):
                handle.write(os.urandom(1 << 20))
    (folder / "config.json").write_text(json.dumps({"format": "kiln-engine"}))
    write_manifest(folder, build_manifest(folder, key, "bench"))
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def plain_ranged_download(client, prefix: str, files: list[Path], root: Path, dest: Path,
                            workers: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> None:
    """Every file as ranged GETs on `workers` threads, written in place; nothing verified."""
    jobs = []
    for path in files:
        size = path.stat().st_size
        target = dest / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as handle:
            handle.truncate(size)
        jobs += [(path.relative_to(root), target, offset, min(chunk_bytes, size - offset))
                 for offset in range(0, size, chunk_bytes)]

    def fetch(job) -> None:
        relative, target, offset, length = job
        response = client.get_object(BUCKET, f"{prefix}/{relative}", offset=offset, length=length)
        try:
            data = response.read()
        finally:
            response.close()
            response.release_conn()
        fd = os.open(target, os.O_WRONLY)
        try:
            os.pwrite(fd, data, offset)
        finally:
            os.close(fd)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(fetch, jobs))


def plain_parallel_download(client, prefix: str, files: list[Path], root: Path,
                            dest: Path) -> None:
    """Every object with `fget_object`, all at once (one thread each); nothing verified."""
    with ThreadPoolExecutor(max_workers=len(files)) as pool:
        list(pool.map(lambda p: client.fget_object(BUCKET, f"{prefix}/{p.relative_to(root)}",
                                                   str(dest / p.relative_to(root))), files))


def read_every_object(client, prefixes: list[str]) -> None:
    """Reads every object under `prefixes` once and drops the bytes (untimed)."""
    infos = [info for prefix in prefixes
             for info in client.list_objects(BUCKET, prefix=prefix + "/", recursive=True)]
    for info in infos:
        for offset in range(0, info.size, 64 << 20):
            response = client.get_object(BUCKET, info.object_name, offset=offset,
                                         length=min(64 << 20, info.size - offset))
            try:
                response.read()
            finally:
                response.close()
                response.release_conn()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=512)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=16, help="Kiln pull's parallel ranges")
    parser.add_argument("--out", type=Path, default=Path("bench/results/bench_store.json"))
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="kiln-bench-store-"))
    proc, settings = start_rclone(work / "s3")
    try:
        client = make_client(settings)
        times = {"kiln_publish": [], "plain_upload": [], "kiln_pull": [], "plain_download": [],
                 "plain_parallel_download": [], "plain_ranged_download": []}
        for repeat in range(args.repeats):
            key = secrets.token_hex(32)
            engine = work / f"engine-{repeat}"
            total_bytes = make_engine(engine, args.size_mb, args.files, key)
            store = open_store(f"s3://{BUCKET}/kiln{repeat}", settings)
            times["kiln_publish"].append(timed(lambda: store.publish_engine(engine)))
            files = sorted(p for p in engine.rglob("*") if p.is_file())
            times["plain_upload"].append(timed(lambda: [
                client.fput_object(BUCKET, f"plain{repeat}/{p.relative_to(engine)}", str(p))
                for p in files]))
            uri = store.engine_uri(key)
            dest = work / f"plain-{repeat}"
            parallel_dest = work / f"plain-parallel-{repeat}"
            ranged_dest = work / f"plain-ranged-{repeat}"
            downloads = [
                ("kiln_pull", lambda: pull_engine(uri, work / f"cache-{repeat}", settings,
                                                  num_workers=args.workers)),
                ("plain_download", lambda: [
                    client.fget_object(BUCKET, f"plain{repeat}/{p.relative_to(engine)}",
                                       str(dest / p.relative_to(engine))) for p in files]),
                ("plain_parallel_download", lambda: plain_parallel_download(
                    client, f"plain{repeat}", files, engine, parallel_dest)),
                ("plain_ranged_download", lambda: plain_ranged_download(
                    client, f"plain{repeat}", files, engine, ranged_dest, args.workers)),
            ]
            # Every download starts from the same state: the objects read once (the server's
            # files in the page cache, for whichever download runs first too), and no write-back
            # pending from the uploads or the download before. Without this, the first download
            # of a repeat read cold data and the next ones paid the previous one's write-back:
            # the same download varied 2-15x between repeats (results/bench_store.json).
            read_every_object(client, [f"kiln{repeat}", f"plain{repeat}"])
            shift = repeat % len(downloads)
            for name, download in downloads[shift:] + downloads[:shift]:
                os.sync()
                times[name].append(timed(download))
            for path in (engine, work / f"cache-{repeat}", dest, parallel_dest, ranged_dest):
                shutil.rmtree(path, ignore_errors=True)
            for root in (work / "s3" / BUCKET / f"kiln{repeat}", work / "s3" / BUCKET / f"plain{repeat}"):
                shutil.rmtree(root, ignore_errors=True)
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)

    mib = total_bytes / (1 << 20)
    result = {
        "bench": "store", "server": "rclone serve s3 on 127.0.0.1", "size_mib": round(mib, 1),
        "files": args.files + 1, "repeats": args.repeats, "pull_workers": args.workers,
        "cpu_count": os.cpu_count(), "machine": platform.machine(),
        "median_s": {k: round(statistics.median(v), 3) for k, v in times.items()},
        "median_mib_s": {k: round(mib / statistics.median(v), 1) for k, v in times.items()},
        "all_s": {k: [round(x, 3) for x in v] for k, v in times.items()},
    }
    result["pull_vs_plain_download"] = round(result["median_mib_s"]["kiln_pull"]
                                             / result["median_mib_s"]["plain_download"], 2)
    for plain in ("plain_parallel_download", "plain_ranged_download"):
        result[f"pull_vs_{plain}"] = round(
            result["median_mib_s"]["kiln_pull"] / result["median_mib_s"][plain], 2)
    result["publish_vs_plain_upload"] = round(result["median_mib_s"]["kiln_publish"]
                                              / result["median_mib_s"]["plain_upload"], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    rate = result["median_mib_s"]
    print(f"{mib:.0f} MiB in {args.files + 1} files, median of {args.repeats}, loopback")
    print(f"{'':10}{'Kiln':>14}{'plain minio':>14}{'ratio':>8}")
    print(f"{'upload':10}{rate['kiln_publish']:>10.1f} MiB/s{rate['plain_upload']:>10.1f} MiB/s"
          f"{result['publish_vs_plain_upload']:>8.2f}")
    print(f"{'download':10}{rate['kiln_pull']:>10.1f} MiB/s{rate['plain_download']:>10.1f} MiB/s"
          f"{result['pull_vs_plain_download']:>8.2f}")
    for label, plain in (("parallel", "plain_parallel_download"),
                         ("ranged", "plain_ranged_download")):
        print(f"{label:10}{rate['kiln_pull']:>10.1f} MiB/s{rate[plain]:>10.1f} MiB/s"
              f"{result[f'pull_vs_{plain}']:>8.2f}")
    print("(Kiln pull includes sha256 verification of every byte; plain download verifies nothing)")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
