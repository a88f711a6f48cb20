"""Configuration: every schema as frozen dataclasses, loaded by one strict loader (`config.loader`).

- `config.train`: `TrainConfig` (`ftcot train`) and its mesh, optimizer and distributed sections.
"""

from ftcot_jax.config.loader import apply_overrides, check_choice, from_dict, load_config, replace, save_config, to_dict
from ftcot_jax.config.train import DistributedConfig, MeshConfig, OptimConfig, TrainConfig

__all__ = ["DistributedConfig", "MeshConfig", "OptimConfig", "TrainConfig", "apply_overrides", "check_choice",
           "from_dict", "load_config", "replace", "save_config", "to_dict"]
