"""orbax checkpoints of a training run: train state (params, optimizer, step, RNG) + data position (JSON).

Saves are asynchronous (training continues while the arrays are written) and atomic: orbax writes a
step into a temporary directory and renames it only once everything is on disk, so a crash mid-save
leaves no half-written step, and the temporary leftovers are deleted when the manager is reopened.
Retention: the last `keep_last` steps plus the `keep_best` steps with the highest eval accuracy.
On `gs://` (paths.as_path) orbax marks a finished step with a `commit_success.txt` object instead of a
rename, and tensorstore writes the arrays to the bucket directly.
"""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

from ftcot_jax.paths import AnyPath, as_path, is_remote

BEST_METRIC = "accuracy"


class NoCheckpointError(FileNotFoundError):
    """A run that must resume (`train(require_checkpoint=True)`) found no checkpoint."""


class Checkpoints:
    def __init__(self, directory: str | AnyPath, *, keep_last: int = 2, keep_best: int = 1, async_save: bool = True):
        self.directory = _absolute(directory)
        _remove_unfinished_saves(self.directory)
        policies = [cm.LatestN(n=keep_last)]
        if keep_best:
            policies.append(
                cm.BestN(
                    get_metric_fn=lambda m: m[BEST_METRIC],
                    reverse=False,
                    n=keep_best,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=async_save,
            preservation_policy=cm.AnyPreservationPolicy(policies),
            # Done above instead: orbax's own cleanup runs in a background future that nothing public awaits.
            cleanup_tmp_directories=False,
            create=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state, data: dict, metrics: dict | None = None) -> bool:
        """Start an async save of `state` (a pytree of jax arrays) and the JSON-able `data`."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data))
        return self.manager.save(step, args=args, metrics=metrics, force=True)

    def restore(self, step: int, abstract_state):
        """(state, data) of `step`; arrays land with the shardings of `abstract_state`'s leaves
        (jax.ShapeDtypeStruct with .sharding)."""
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore())
        out = self.manager.restore(step, args=args)
        return out["state"], out["data"]

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


def _absolute(path) -> AnyPath:
    """as_path, made absolute when local (orbax refuses relative paths)."""
    p = as_path(path)
    return p if is_remote(p) else p.absolute()


def _remove_unfinished_saves(directory: AnyPath) -> None:
    """Delete the temporary step directories of saves killed half-way, before the manager opens the directory,
    so that a reopened run never shows a half-written step. Process 0 deletes (orbax's primary host)."""
    if jax.process_index() == 0:
        for tmp in ocp.path.step.all_temporary_paths(directory):
            tmp.get().rmtree()


def abstract_like(tree, shardings):
    """ShapeDtypeStructs carrying the target shardings, for restore."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def tmp_dirs(directory: str | AnyPath) -> list[AnyPath]:
    """Temporary (uncommitted) step directories orbax left behind, e.g. after a crash mid-save (on a bucket:
    step directories without their commit_success.txt)."""
    d = as_path(directory)
    if is_remote(d):
        return sorted(t.get() for t in ocp.path.step.all_temporary_paths(d))
    return sorted(p for p in d.glob("*") if ".orbax-checkpoint-tmp" in p.name) if d.is_dir() else []


# ----------------------------------------------------------------------------- reading one saved step


def saved_steps(directory: str | Path) -> list[int]:
    """The finished (committed) steps in a checkpoint directory, ascending; [] when there is none."""
    d = _absolute(directory)
    return sorted(ocp.utils.checkpoint_steps(d)) if d.is_dir() else []


def restore_params(step_dir: str | Path, abstract_params):
    """Only the parameters of one saved step (no optimizer state is read): `abstract_params` is the params
    pytree of ShapeDtypeStructs with the dtype and sharding to restore to."""
    item = {"params": abstract_params}
    args = ocp.args.PyTreeRestore(
        item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item), partial_restore=True
    )
    with ocp.PyTreeCheckpointer() as ckptr:
        return ckptr.restore(_absolute(step_dir) / "state", args=args)["params"]


def read_position(step_dir: str | Path) -> dict:
    """The data position and evaluation history saved with one step (the `data` item)."""
    with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as ckptr:
        return ckptr.restore(_absolute(step_dir) / "data", args=ocp.args.JsonRestore())
