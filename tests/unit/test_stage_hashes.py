"""Golden train-stage hashes: a run made by an earlier version stays current (its stages are skipped, nothing
retrains) when new config keys are added at their defaults. The values were computed by ftcot-jax at commit
a645df8 for the shipped configs, with the curation hash fixed."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftcot_jax.config import load_run_config
from ftcot_jax.pipeline.curate import methods_of
from ftcot_jax.pipeline.run import train_config
from ftcot_jax.pipeline.stages import train_hash

ROOT = Path(__file__).parent.parent.parent
GOLDEN = {
    ("configs/quickstart.yaml", "ft"): "0afb749ea837f00f",
    ("configs/quickstart.yaml", "ft_cot"): "149d64ccd7b1fa8d",
    ("configs/paper/real_teacher_smollm2.yaml", "ft"): "ee3f73b387ecd61b",
    ("configs/paper/real_teacher_smollm2.yaml", "ft_cot"): "34ae86d14a6f45fa",
}


@pytest.mark.parametrize("config, method", sorted(GOLDEN))
def test_train_hash_is_the_one_earlier_versions_wrote(config, method):
    cfg = load_run_config(ROOT / config, ["run_dir=/r"])
    m = next(m for m in methods_of(cfg) if m.key == method)
    task = cfg.tasks[0]
    t = train_config(cfg, task, m, Path("/r/samples") / f"{task}__{m.key}.tfrecord")
    assert train_hash(cfg, t, "c0ffee") == GOLDEN[(config, method)]


def test_remat_does_not_change_the_train_hash():
    cfg = load_run_config(ROOT / "configs/quickstart.yaml", ["run_dir=/r", "train.remat=full"])
    m = next(m for m in methods_of(cfg) if m.key == "ft_cot")
    t = train_config(cfg, cfg.tasks[0], m, Path("/r/samples") / f"{cfg.tasks[0]}__ft_cot.tfrecord")
    assert train_hash(cfg, t, "c0ffee") == GOLDEN[("configs/quickstart.yaml", "ft_cot")]
