"""The `kiln` command line.

    kiln build ...          python -m builder_service build ...   (a build, local or on a builder)
    kiln convert ...        python -m builder_service convert ...
    kiln serve-builder ...  python -m builder_service serve ...
    kiln serve-runtime ...  python -m runtime_service serve ...
    kiln generate PROMPT    stream a generation to the terminal
    kiln engines list|delete

The service commands run the services' own entry points as child processes, so `kiln` keeps the
import direction (it never imports runtime_service or builder_service) and a flag documented on
a service is the flag the CLI takes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys

from kiln.errors import KilnError

PASS_THROUGH = {
    "build": ["-m", "builder_service", "build"],
    "convert": ["-m", "builder_service", "convert"],
    "serve-builder": ["-m", "builder_service", "serve"],
    "serve-runtime": ["-m", "runtime_service", "serve"],
}


def _run_service(command: str, argv: list[str]) -> int:
    """Runs the service's entry point and returns its exit code (128 + N if signal N killed it).
    SIGTERM is passed on, so a stopped pod's build removes its partial folder as it does when run
    directly. A SIGINT that a terminal's Ctrl-C sent reached the child too (the whole foreground
    process group gets it), so it is not sent again: a second one would cut the child's cleanup
    short. Either way the child is waited for, never killed."""
    child: subprocess.Popen | None = None
    pending: list[int] = []

    def pass_on(signum, _frame) -> None:
        if signum == signal.SIGINT and _in_terminal_foreground():
            return
        if child is None:
            pending.append(signum)
        else:
            child.send_signal(signum)

    previous = {sig: signal.signal(sig, pass_on) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        child = subprocess.Popen([sys.executable, *PASS_THROUGH[command], *argv])
        for signum in pending:
            child.send_signal(signum)
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code if code >= 0 else 128 - code


def _in_terminal_foreground() -> bool:
    """Whether this process is in its terminal's foreground process group (where Ctrl-C lands)."""
    try:
        fd = os.open("/dev/tty", os.O_RDONLY)
    except OSError:
        return False
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False
    finally:
        os.close(fd)


def token_ids(text: str) -> list[int]:
    """The token ids in `text`, separated by commas, spaces or both ("5,17,99", "5 17 99": the
    way `kiln generate --ids` prints them); ValueError names what is not an id."""
    parts = [part for part in re.split(r"[\s,]+", text.strip()) if part]
    bad = [part for part in parts if not re.fullmatch(r"\d+", part)]
    if bad:
        raise ValueError(f"--ids takes token ids (non-negative integers) separated by commas or "
                         f"spaces; {bad[0]!r} is not one")
    if not parts:
        raise ValueError("--ids needs at least one token id")
    return [int(part) for part in parts]


def _generate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kiln generate",
                                     description="Stream a generation to the terminal.")
    parser.add_argument("prompt", help="text, or token ids separated by commas or spaces "
                                        "with --ids")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--model", help="model_dir: HF folder, checkpoint or engine (embedded)")
    where.add_argument("--runtime", help="HOST:PORT of a running runtime (default $KILN_RUNTIME)",
                       default=os.environ.get("KILN_RUNTIME") or None)
    parser.add_argument("--ids", action="store_true", help="the prompt is token ids")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--chat", action="store_true",
                        help="wrap the prompt in the model's chat template (text prompts)")
    return parser


def _generate(argv: list[str]) -> int:
    from kiln.client import Endpoint, LoopThread, RuntimeClient
    from kiln.sampling import SamplingConfig
    from kiln.v1 import runtime_pb2

    parser = _generate_parser()
    args = parser.parse_args(argv)
    try:
        prompt = token_ids(args.prompt) if args.ids else args.prompt
    except ValueError as exc:
        parser.error(str(exc))
    llm = loop = client = None
    try:
        sampling = SamplingConfig(max_new_tokens=args.max_new_tokens,
                                  temperature=args.temperature, top_p=args.top_p,
                                  random_seed=args.seed)
        if args.model:
            from kiln import LLM, ModelConfig
            llm = LLM(ModelConfig(model_dir=args.model))
            client = llm.runtime
        else:
            loop = LoopThread()
            client = RuntimeClient(Endpoint.from_env(args.runtime), loop)
        if args.chat and isinstance(prompt, str):
            prompt = _chat_prompt(client.model_info().chat_template, prompt)
        request = runtime_pb2.GenerateRequest(streaming=True)
        request.sampling.CopyFrom(sampling.to_proto()[0])
        if isinstance(prompt, str):
            request.text = prompt
        else:
            request.token_ids.ids.extend(prompt)
        shown = 0
        result = client.generate(request, prompt, None)
        for output in result:
            if args.ids:
                print(" ".join(map(str, output.token_ids[shown:])), end=" ", flush=True)
                shown = len(output.token_ids)
            else:
                print(output.text[shown:], end="", flush=True)
                shown = len(output.text)
        print(f"\n[{result.finish_reason}; {result.usage.get('completion_tokens', 0)} tokens]",
              file=sys.stderr)
        return 0
    except KilnError as exc:
        print(f"kiln generate: error: {exc.code}: {exc}", file=sys.stderr)
        return 1
    finally:
        if llm is not None:
            llm.shutdown()
        if client is not None and llm is None:
            client.close()
        if loop is not None:
            loop.close()


def _chat_prompt(template: str, text: str) -> str:
    """The ChatML turn most LLaMA-family instruct models (SmolLM2 among them) expect."""
    if "<|im_start|>" not in template:
        return text
    return f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"


def _engines(argv: list[str]) -> int:
    from kiln.client import BuilderClient, Endpoint, LoopThread
    from kiln.embedded import kiln_home, start_builder

    parser = argparse.ArgumentParser(prog="kiln engines", description="List or delete engines.")
    parser.add_argument("action", choices=("list", "delete"))
    parser.add_argument("engine", nargs="?", help="engine key or name (delete)")
    parser.add_argument("--builder", default=os.environ.get("KILN_BUILDER") or None,
                        help="HOST:PORT (default $KILN_BUILDER, else a local builder over "
                             "$KILN_HOME/store)")
    args = parser.parse_args(argv)
    if args.action == "delete" and not args.engine:
        parser.error("delete needs an engine key or name")
    process = None
    loop = LoopThread()
    try:
        address = args.builder
        if address is None:
            process = start_builder(kiln_home(), [])
            address = process.wait_listening(120)
        client = BuilderClient(Endpoint(address, process.token) if process is not None
                               else Endpoint.from_env(address), loop)
        if process is not None:
            _wait_serving(client, process)
        if args.action == "list":
            for engine in client.list_engines():
                print(json.dumps({"engine_key": engine.ref.engine_key, "name": engine.ref.name,
                                  "uri": engine.ref.uri, "size_bytes": engine.size_bytes,
                                  "dtype": engine.settings.dtype}))
        else:
            print(client.delete_engine(args.engine))
        client.close()
        return 0
    except KilnError as exc:
        print(f"kiln engines: error: {exc.code}: {exc}", file=sys.stderr)
        return 1
    finally:
        if process is not None:
            process.stop()
        loop.close()


def _wait_serving(client, process, timeout_s: float = 120.0) -> None:
    import time
    deadline = time.monotonic() + timeout_s
    while True:
        process.check_alive()
        try:
            if client.health() == "SERVING":
                return
        except KilnError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)


COMMANDS = ("build", "convert", "serve-builder", "serve-runtime", "generate", "engines")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip().split("\n\n")[1], file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, rest = argv[0], argv[1:]
    if command in PASS_THROUGH:
        return _run_service(command, rest)
    return _generate(rest) if command == "generate" else _engines(rest)


if __name__ == "__main__":
    sys.exit(main())
