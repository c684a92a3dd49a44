"""`python -m runtime_service serve ...` (what `kiln serve-runtime` runs)."""

import sys

COMMANDS = ("serve",)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m runtime_service {{{','.join(COMMANDS)}}} [--help]", file=sys.stderr)
        return 2
    from runtime_service.serve import main as serve_main
    return serve_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
