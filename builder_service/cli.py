"""`python -m builder_service serve | build | convert` (what `kiln serve-builder`, `kiln build` and
`kiln convert` run). `build` is the batch entry point of a Kubernetes Job: it builds in-process
against --store, or through a running builder with --builder, and exits with a code the Job can
act on (status.py lists them). The engine reference is printed to stdout as one JSON line.

SIGTERM (how Kubernetes stops a Job's pod) stops `build` and `convert` the way Ctrl-C does: the
work unwinds, its partial folder is removed, and the exit code is 143 (128 + SIGTERM).
For tests, KILN_BUILD_TEST_PAUSE_AT=STAGE holds a build at its first progress event of STAGE
(e.g. `convert`, while its partial folder exists) until a signal arrives, so a test can stop a
build midway without racing it; unset, nothing waits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

from runtime_service.format.engine_config import Mapping, QuantConfig, Target
from runtime_service.errors import InvalidRequest

from builder_service.progress import TEST_PAUSE_ENV as PAUSE_ENV
from builder_service.status import EXIT_INTERNAL, EXIT_OK, exit_code_for

DEFAULT_PORT = 50052
EXIT_TERMINATED = 128 + signal.SIGTERM


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that a build unwinds through its `finally` blocks
    (removing its partial folder) as it does for KeyboardInterrupt; like that, no
    `except Exception` on the way can swallow it."""


def _raise_terminated(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)     # a second SIGTERM must not cut cleanup short
    raise Terminated()


class _PausingPrinter:
    """A progress printer that holds the build at the first event of `stage` until a signal's
    handler raises (the test hook PAUSE_ENV names)."""

    def __init__(self, printer, stage: str):
        self._printer = printer
        self._stage = stage
        self._paused = False

    def __call__(self, event) -> None:
        self._printer(event)
        if event.stage == self._stage and not self._paused:
            self._paused = True
            print(f"kiln build: paused at stage {self._stage} ({PAUSE_ENV})", file=sys.stderr,
                  flush=True)
            while True:
                time.sleep(0.1)

    def finish(self) -> None:
        self._printer.finish()


def kiln_home() -> Path:
    return Path(os.environ.get("KILN_HOME", Path.home() / ".cache" / "kiln"))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m builder_service",
                                     description="Kiln builder: build, convert and serve engines")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the Builder gRPC service")
    serve.add_argument("--listen", default=f"127.0.0.1:{DEFAULT_PORT}")
    serve.add_argument("--store", required=True, help="path, file:// or s3://bucket/prefix")
    serve.add_argument("--work-dir", type=Path, default=None)
    serve.add_argument("--allowed-root", type=Path, action="append", default=[],
                       help="local source folders must lie under one of these (repeatable)")
    serve.add_argument("--tls-cert", type=Path)
    serve.add_argument("--tls-key", type=Path)
    serve.add_argument("--token-file", type=Path, help="require 'authorization: Bearer <token>'")
    serve.add_argument("--max-concurrent-builds", type=int, default=2)
    serve.add_argument("--max-upload-bytes", type=int, default=1 << 40)
    serve.add_argument("--metrics-listen", default="",
                       help="HOST:PORT for Prometheus /metrics over HTTP; empty: none")
    serve.add_argument("--otlp-endpoint", default="",
                       help="OTLP/gRPC collector for Build traces; default: "
                       "OTEL_EXPORTER_OTLP_ENDPOINT, else tracing is off")
    serve.add_argument("--log-format", default="text", choices=("text", "json"))

    build = sub.add_parser("build", help="build an engine and publish it (a batch Job)")
    build.add_argument("--model", required=True,
                       help="HF folder, checkpoint or engine: path, s3:// or upload:// URI")
    build.add_argument("--store", help="where to publish (in-process build)")
    build.add_argument("--builder", help="HOST:PORT of a builder service to build on instead")
    build.add_argument("--name", default="")
    build.add_argument("--tp", type=int, default=1)
    build.add_argument("--pp", type=int, default=1)
    build.add_argument("--dtype", default="bfloat16")
    for limit in ("max-batch-size", "max-input-len", "max-seq-len", "max-num-tokens",
                  "max-beam-width"):
        build.add_argument(f"--{limit}", type=int, default=None)
    build.add_argument("--quant", "--quant-algo", dest="quant", default="NONE",
                       help="NONE, W4A16, W4A16_AWQ, W8A16 or FP8")
    build.add_argument("--group-size", type=int, default=128, help="int4 group: 128, 64 or 32")
    build.add_argument("--kv-cache-quant-algo", default="auto", help="auto, int8 or fp8")
    build.add_argument("--exclude-modules", nargs="+", default=[], metavar="NAME",
                       help="decoder linears to keep unquantized: module names or fnmatch "
                            "patterns, e.g. 'model.layers.0.*' '*.mlp.down_proj'")
    build.add_argument("--calib-data", default="",
                       help="W4A16_AWQ calibration text or JSONL (path or s3://); default: the "
                            "standard library's documentation topics")
    build.add_argument("--calib-num-samples", type=int, default=0)
    build.add_argument("--calib-seq-len", type=int, default=0)
    build.add_argument("--target-device", default="any", help="any, cpu or cuda")
    build.add_argument("--warm-startup-cache", action="store_true",
                       help="after publishing, start the engine once on this machine's GPU so "
                       "the store holds its tuning and compiled kernels for this GPU model "
                       "(in-process builds)")
    build.add_argument("--work-dir", type=Path, default=None)
    build.add_argument("--token-file", type=Path, help="bearer token for --builder")
    build.add_argument("--tls-ca", type=Path, help="CA certificate to reach --builder over TLS")
    build.add_argument("--timeout-s", type=float, default=None)

    convert = sub.add_parser("convert", help="convert an HF folder to a Kiln checkpoint")
    convert.add_argument("--model", required=True, type=Path)
    convert.add_argument("--output", required=True, type=Path)
    convert.add_argument("--tp", type=int, default=1)
    convert.add_argument("--pp", type=int, default=1)
    convert.add_argument("--dtype", default=None, help="float32, float16 or bfloat16 (default: "
                                                       "keep the source's)")
    return parser


def _spec(args):
    from builder_service.settings import BuildSpec
    return BuildSpec(source=args.model, name=args.name, dtype=args.dtype,
                     max_batch_size=args.max_batch_size, max_input_len=args.max_input_len,
                     max_seq_len=args.max_seq_len, max_num_tokens=args.max_num_tokens,
                     max_beam_width=args.max_beam_width,
                     quant=QuantConfig(algo=args.quant, group_size=args.group_size,
                                       kv_cache_dtype=args.kv_cache_quant_algo.lower(),
                                       exclude_modules=tuple(args.exclude_modules),
                                       calib_num_samples=args.calib_num_samples,
                                       calib_seq_len=args.calib_seq_len),
                     mapping=Mapping(args.tp, args.pp), target=Target(device=args.target_device),
                     calib_data=args.calib_data)


def _print_ref(engine_key: str, uri: str, name: str, cached: bool) -> None:
    print(json.dumps({"engine_key": engine_key, "uri": uri, "name": name, "cached": cached}),
          flush=True)


def _build_local(args, printer) -> None:
    from builder_service.builder import EngineBuilder
    from builder_service.sources import SourceResolver
    from runtime_service.store import open_store
    if not args.store:
        raise InvalidRequest("build needs --store (or --builder HOST:PORT)")
    work_dir = args.work_dir or kiln_home() / "builder"
    builder = EngineBuilder(open_store(args.store), SourceResolver(work_dir, None), work_dir)
    outcome = builder.build(_spec(args), printer)
    printer.finish()
    if args.warm_startup_cache:
        from builder_service.warm_start import warm_startup_cache
        warm_startup_cache(outcome.engine.uri, work_dir)
    _print_ref(outcome.engine.engine_key, outcome.engine.uri, outcome.engine.name,
               outcome.cached)


def _build_remote(args, printer) -> None:
    import grpc
    from kiln.v1 import builder_pb2_grpc

    from runtime_service.server.auth import read_token_file
    from builder_service.messages import request_from_spec
    from builder_service.pipeline import BuildProgress
    from builder_service.upload_client import upload_folder
    spec = _spec(args)
    metadata = ([("authorization", f"Bearer {read_token_file(args.token_file)}")]
                if args.token_file else None)
    channel = (grpc.secure_channel(args.builder, grpc.ssl_channel_credentials(
        args.tls_ca.read_bytes())) if args.tls_ca else grpc.insecure_channel(args.builder))
    with channel:
        stub = builder_pb2_grpc.BuilderStub(channel)
        request = request_from_spec(spec)
        if "://" not in spec.source and Path(spec.source).is_dir():
            printer(BuildProgress("upload", 0, 0, "", f"uploading {spec.source}"))
            ref = upload_folder(stub, Path(spec.source), metadata, args.timeout_s)
            printer(BuildProgress("upload", ref.size_bytes, ref.size_bytes, "bytes",
                                  f"sent {ref.received_bytes} new bytes"))
            request.source = ref.uri
        for event in stub.Build(request, metadata=metadata, timeout=args.timeout_s):
            if event.HasField("progress"):
                p = event.progress
                printer(BuildProgress(p.stage, p.done, p.total, p.unit, p.message))
            else:
                printer.finish()
                ref = event.result.engine.ref
                _print_ref(ref.engine_key, ref.uri, ref.name, event.result.cached)


def _convert(args, printer) -> None:
    from builder_service.pipeline import convert_checkpoint
    from builder_service.sources import SourceResolver
    work_dir = kiln_home() / "builder"
    source = SourceResolver(work_dir, None).resolve(str(args.model))
    if source.kind != "hf":
        raise InvalidRequest(f"convert takes an HF folder; {args.model} is a {source.kind}")
    convert_checkpoint(source, args.output, args.tp, args.pp, args.dtype, printer)
    printer.finish()
    print(json.dumps({"checkpoint": str(args.output.resolve())}), flush=True)


def _serve(args) -> None:
    from runtime_service.server.auth import read_token_file
    from builder_service.server import ServerOptions, serve
    from builder_service.uploads import UploadLimits
    options = ServerOptions(
        store_uri=args.store, work_dir=args.work_dir or kiln_home() / "builder",
        listen=args.listen, allowed_roots=tuple(args.allowed_root), tls_cert=args.tls_cert,
        tls_key=args.tls_key, token=read_token_file(args.token_file) if args.token_file else None,
        max_concurrent_builds=args.max_concurrent_builds,
        upload_limits=UploadLimits(max_total_bytes=args.max_upload_bytes),
        metrics_listen=args.metrics_listen, otlp_endpoint=args.otlp_endpoint)
    asyncio.run(serve(options))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from runtime_service.server.log_format import configure_logging
    configure_logging("INFO", getattr(args, "log_format", "text"))
    from builder_service.progress import ProgressPrinter
    printer = ProgressPrinter()
    on_sigterm = signal.getsignal(signal.SIGTERM)
    if args.command != "serve":                        # the server drains on SIGTERM itself
        signal.signal(signal.SIGTERM, _raise_terminated)
    if os.environ.get(PAUSE_ENV):
        printer = _PausingPrinter(printer, os.environ[PAUSE_ENV])
    try:
        if args.command == "serve":
            _serve(args)
        elif args.command == "build":
            if args.builder and args.warm_startup_cache:
                raise InvalidRequest("--warm-startup-cache warms on this machine's GPU: use it "
                                     "with --store, not --builder")
            (_build_remote if args.builder else _build_local)(args, printer)
        else:
            _convert(args, printer)
        return EXIT_OK
    except KeyboardInterrupt:
        return 130
    except Terminated:
        printer.finish()
        print(f"kiln {args.command}: stopped by SIGTERM; its unfinished output was removed",
              file=sys.stderr, flush=True)
        return EXIT_TERMINATED
    except Exception as exc:
        printer.finish()
        code = exit_code_for(exc)
        message = exc.details() if hasattr(exc, "details") else str(exc)
        print(f"kiln {args.command}: error: {message}", file=sys.stderr, flush=True)
        return code if code != EXIT_OK else EXIT_INTERNAL
    finally:
        if on_sigterm is not None:                     # None: not set from Python; left as is
            signal.signal(signal.SIGTERM, on_sigterm)
