"""The trainer config a compile uses: a `ftcot train` config as it is, or a `ftcot run` config's train section
with its student and eval sections, as the pipeline hands them to the trainer (every task and method of a run
trains the same shapes, so one compile covers them)."""

from __future__ import annotations

import dataclasses

import yaml

from ftcot_jax.config import RunConfig, TrainConfig, load_config
from ftcot_jax.paths import as_path

# Keys only a run config has at its top level.
RUN_KEYS = {"tasks", "teacher", "curate", "report", "train"}


def train_config_of_run(cfg: RunConfig) -> TrainConfig:
    """The trainer's config of any (task, method) of the run, without the paths the pipeline fills in."""
    return dataclasses.replace(cfg.train, run_dir=cfg.run_dir, student=cfg.student, eval=cfg.eval)


def load_compile_config(path: str, overrides: list[str]) -> TrainConfig:
    """A train config, or a run config's trainer config, from a YAML file plus dotted overrides."""
    p = as_path(path)
    if not p.is_file():
        raise ValueError(f"{path}: no such config file")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of config keys")
    if RUN_KEYS & set(raw):
        return train_config_of_run(load_config(path, list(overrides), cls=RunConfig))
    return load_config(path, list(overrides), cls=TrainConfig)
