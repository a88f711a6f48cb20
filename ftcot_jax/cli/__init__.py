"""The `ftcot` command line: one subcommand per pipeline stage.

This package is the only code that sees argparse. Each module declares the parsers of one group of
commands and their handlers; a handler imports its stage lazily so that `ftcot tasks list` does not
pay for importing JAX or PyTorch. Library code raises typed errors; `main` prints them as one line.
"""

from __future__ import annotations

import argparse
import sys

from ftcot_jax.cli import compare, models, pipeline, serve, tasks, teacher, train
from ftcot_jax.cli import compile as compile_cmd
from ftcot_jax.cli.common import CLIError

# In pipeline order: tasks -> models -> teach/cache -> curate -> train -> compile -> serve -> run/report -> compare.
COMMAND_GROUPS = (tasks, models, teacher, train, compile_cmd, serve, pipeline, compare)

__all__ = ["CLIError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ftcot",
        description="Fine-tune-CoT in JAX: teach -> curate -> train -> evaluate -> report.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.add_parsers(sub)
    return parser


# Commands that compile JAX programs: they keep them in the persistent compilation cache (ftcot_jax/jax_setup.py).
COMPILING_COMMANDS = ("train", "run", "serve", "generate", "ask", "evaluate", "compare")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in COMPILING_COMMANDS:
        from ftcot_jax.jax_setup import enable_compilation_cache  # deferred: `ftcot tasks list` needs no JAX

        enable_compilation_cache()
    try:
        return int(args.func(args) or 0)
    except CLIError as e:
        print(f"ftcot {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, KeyError) as e:
        # Library errors are written to be read by users: one line, no traceback.
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"ftcot {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
