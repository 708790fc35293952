"""Command line: ``python -m sb3_tensorpatch doctor`` and ``python -m sb3_tensorpatch bench``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sb3_tensorpatch", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("doctor", help="versions, patch table rows and a live parity self-check (exit 0 or 1)")
    bench = commands.add_parser("bench", help="NumPy predict vs the _predict workaround vs patched tensor predict")
    from .bench import add_arguments

    add_arguments(bench)
    args = parser.parse_args(argv)
    if args.command == "doctor":
        from .doctor import run

        return run()
    from .bench import run as run_bench

    return run_bench(args)


if __name__ == "__main__":
    sys.exit(main())
