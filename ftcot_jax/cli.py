"""The `ftcot` command line: one subcommand per pipeline stage.

Parsers are declared here; each handler imports its stage module lazily so that
`ftcot tasks list` does not pay for importing JAX or PyTorch.
Each block below belongs to one stage; keep stage logic in the stage module, not here.
"""

from __future__ import annotations

import argparse
import sys


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2, no traceback."""


# Each stage block appends its `add_<stage>_parser(sub)` function (in pipeline order).
_SUBCOMMANDS: list = []


# --- tasks (issue 2) -------------------------------------------------------


# --- models / decode (issue 3) ---------------------------------------------


# --- teacher, cache, curate (issue 5) --------------------------------------


# --- train (issue 4) -------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ftcot",
        description="Fine-tune-CoT in JAX: teach -> curate -> train -> evaluate -> report.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
