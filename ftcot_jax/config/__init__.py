"""Configuration: every schema as frozen dataclasses, loaded by one strict loader (`config.loader`).

- `config.train`: `TrainConfig` (`ftcot train`) and its student, eval, mesh, optimizer and distributed sections.
- `config.serve`: `ServeConfig` (`ftcot serve`).
- `config.run`: `RunConfig` (`ftcot run`): the teacher, curate and report sections, plus the trainer's own.
- `config.compare`: `CompareSpec` (`ftcot compare`).
"""

from ftcot_jax.config.compare import CompareSpec, load_compare_spec
from ftcot_jax.config.loader import apply_overrides, check_choice, from_dict, load_config, replace, save_config, to_dict
from ftcot_jax.config.run import CurateSection, ReportSection, RunConfig, TeacherSection, load_run_config
from ftcot_jax.config.serve import ServeConfig
from ftcot_jax.config.train import DistributedConfig, EvalSection, MeshConfig, OptimConfig, StudentSection, TrainConfig

__all__ = [
    "CompareSpec",
    "CurateSection",
    "DistributedConfig",
    "EvalSection",
    "MeshConfig",
    "OptimConfig",
    "ReportSection",
    "RunConfig",
    "ServeConfig",
    "StudentSection",
    "TeacherSection",
    "TrainConfig",
    "apply_overrides",
    "check_choice",
    "from_dict",
    "load_compare_spec",
    "load_config",
    "load_run_config",
    "replace",
    "save_config",
    "to_dict",
]
