"""The strict config loader shared by every schema: YAML/dict -> frozen dataclasses, dotted overrides.

Loading is strict: an unknown key is an error that names the key and lists the valid ones, and every
value is type-checked, so a typo fails before anything is compiled.

    cfg = load_config("run.yaml", ["optim.lr=1e-4", "mesh.fsdp=2"], cls=TrainConfig)
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from ftcot_jax.files import write_text_atomic
from ftcot_jax.paths import as_path


def check_choice(name: str, value: str, choices: tuple[str, ...]):
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _coerce(where: str, tp: Any, value: Any) -> Any:
    """Type-check `value` against annotation `tp` (with the few conversions YAML needs)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(where, a, value)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(errors[0] if errors else f"{where}: unexpected value {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"config key '{where}' expects a mapping, got {value!r}")
        return from_dict(tp, value, prefix=where + ".")
    if origin is tuple:
        (elem, *_rest) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config key '{where}' expects a list, got {value!r}")
        return tuple(_coerce(f"{where}[{i}]", elem, v) for i, v in enumerate(value))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"config key '{where}' expects true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ValueError(f"config key '{where}' expects an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ValueError(f"config key '{where}' expects a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"config key '{where}' expects a string, got {value!r}")
    if tp is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
        raise ValueError(f"config key '{where}' expects a mapping, got {value!r}")
    raise TypeError(f"config key '{where}': unsupported annotation {tp!r}")


def from_dict(cls, data: dict | None, *, prefix: str = ""):
    """Build dataclass `cls` from a (nested) dict; unknown keys raise ValueError naming them."""
    data = _move_renamed(cls, dict(data or {}), prefix)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            raise ValueError(f"unknown config key '{prefix}{key}'; expected one of: {', '.join(fields)}")
    kwargs = {k: _coerce(prefix + k, hints[k], v) for k, v in data.items()}
    return cls(**kwargs)


def _move_renamed(cls, data: dict, prefix: str) -> dict:
    """Keys a schema renamed (its `RENAMED_KEYS`, old -> new dotted path) move to their new place; the same
    setting given under both names is an error naming both."""
    for old, new in getattr(cls, "RENAMED_KEYS", {}).items():
        if old not in data:
            continue
        value = data.pop(old)
        *parents, leaf = new.split(".")
        node = data
        for p in parents:
            child = node.get(p)
            if child is None:
                child = node[p] = {}
            elif not isinstance(child, dict):
                raise ValueError(
                    f"config key '{prefix}{old}' is now '{prefix}{new}', but '{prefix}{p}' is not a mapping"
                )
            else:
                child = node[p] = dict(child)
            node = child
        if leaf in node:
            raise ValueError(
                f"config keys '{prefix}{old}' and '{prefix}{new}' name the same setting; keep '{prefix}{new}'"
            )
        node[leaf] = value
    return data


def to_dict(cfg) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Apply `a.b=value` strings (value parsed as YAML) to a nested dict; returns a new dict."""
    out = json.loads(json.dumps(data))
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value (e.g. optim.lr=1e-4)")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: '{p}' is not a section")
        try:
            node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ValueError(f"override {item!r}: the value is not valid YAML: {_problem(e)}") from None
    return out


def _where(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    return f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""


def _problem(e: yaml.YAMLError) -> str:
    return " ".join(str(getattr(e, "problem", None) or e).split())


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), *, cls, base: dict | None = None
):
    """YAML (or JSON) file + dotted overrides -> validated frozen config."""
    data = dict(base or {})
    if path is not None:
        path = as_path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        try:
            text = path.read_text(encoding="utf-8")
            # JSON through the JSON parser: YAML 1.1 reads a JSON number such as 1e-05 (no dot) as a string.
            loaded = (json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)) or {}
        except json.JSONDecodeError as e:
            raise ValueError(f"config file {path} is not valid JSON (line {e.lineno}): {e.msg}") from None
        except yaml.YAMLError as e:
            raise ValueError(f"config file {path} is not valid YAML{_where(e)}: {_problem(e)}") from None
        except UnicodeDecodeError:
            raise ValueError(f"config file {path} is not UTF-8 text; expected a YAML mapping") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"config file {path} must contain a mapping at the top level")
        data.update(loaded)
    return from_dict(cls, apply_overrides(data, overrides))


def replace(cfg, **changes):
    """dataclasses.replace that also accepts dotted keys: replace(cfg, **{"optim.lr": 1e-4})."""
    return from_dict(type(cfg), apply_overrides(to_dict(cfg), [f"{k}={json.dumps(v)}" for k, v in changes.items()]))


def save_config(cfg, path: str | Path):
    write_text_atomic(path, json.dumps(to_dict(cfg), indent=2, sort_keys=True) + "\n")
