"""`python -m runtime_service serve ...` (what `kiln serve-runtime` runs); `worker` is one rank
of a tp x pp engine, started by `serve` itself."""

import sys

COMMANDS = ("serve", "worker")


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m runtime_service {{{','.join(COMMANDS)}}} [--help]", file=sys.stderr)
        return 2
    if argv[0] == "worker":
        from runtime_service.distributed.rank_worker import main as worker_main
        return worker_main(argv[1:])
    from runtime_service.server.serve import main as serve_main
    return serve_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
