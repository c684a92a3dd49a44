"""`python -m runtime_service serve ...` (what `kiln serve-runtime` runs); `worker` is one rank
of a tp x pp engine and `engine-core` the engine's step loop in its own process, both started by
`serve` itself."""

import sys

COMMANDS = ("serve", "worker", "engine-core")


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m runtime_service {{{','.join(COMMANDS)}}} [--help]", file=sys.stderr)
        return 2
    if argv[0] == "worker":
        from runtime_service.distributed.rank_worker import main as worker_main
        return worker_main(argv[1:])
    if argv[0] == "engine-core":
        from runtime_service.server.core_process import run as core_main
        return core_main(argv[1:])
    from runtime_service.server.serve import main as serve_main
    return serve_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
