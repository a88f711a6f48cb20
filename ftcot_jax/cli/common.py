"""What every command shares: the user-facing error type and the config-file options of the commands whose
settings are a config schema (`--config FILE`, `--set KEY=VALUE`, shorthand flags, `--print-config`)."""

from __future__ import annotations

import json


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2, no traceback."""


def add_config_arguments(p, schema: str, example: str) -> None:
    """`--config FILE`, repeatable `--set KEY=VALUE` (dest `overrides`) and `--print-config` for `schema`."""
    p.add_argument("--config", default=None, help=f"YAML file with keys of ftcot_jax.config.{schema}")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"dotted override, e.g. {example} (repeatable)",
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")


def config_overrides(flags: dict, sets: list[str]) -> list[str]:
    """Shorthand flags that were given ({config key: value}, None = not given) as overrides, then the `--set`
    ones, so that --set wins over a flag and both over the config file."""
    return [f"{k}={json.dumps(v)}" for k, v in flags.items() if v is not None] + list(sets)


def print_config(cfg) -> None:
    from ftcot_jax.config import to_dict  # deferred with the config schemas (cli modules import no stage)

    print(json.dumps(to_dict(cfg), indent=2, sort_keys=True))
