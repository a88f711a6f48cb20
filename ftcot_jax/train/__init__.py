"""The student trainer: one jitted, sharded train step over a (data, fsdp, tensor) mesh.

Import from the module that does the job (this package re-exports nothing):
- `train.loop`: `Trainer` and `train(cfg)` -> `TrainResult`, the whole run (resume, epochs, per-epoch
  evaluation); the export of the best epoch is `trained.train_and_export`'s, a floor above.
- `train.state`: `TrainState` (params, optimizer state, step, rng), a typed pytree.
- `train.loss`: one loss per model kind (`loss_for`: `causal_lm_loss`, `seq2seq_loss`).
- `train.student`: `Student`, `build_student` (config or objects -> model graph, abstract params, tokenizer),
  `param_shardings`, `make_param_init`.
- `train.step`: the optimizer (`lr_schedule`, `make_optimizer`), `make_loss_fn`, `make_train_step`, and
  `TrainSetup` (made by `setup(cfg)`): the state's shardings, init and abstract form, and the jitted step, for
  the trainer, the comparison and the benchmarks.
- `train.batches`: fine-tune samples -> token ids (`encode_samples`) -> seeded, resumable per-host batches
  (`Batcher`), and the padding-free layout (`packing_indices`).
- `train.head_loss`: the cross-entropy with the LM head run on label tokens only.
- `train.mesh`: `jax.distributed` start-up, the mesh of a config, batch sharding.
- `train.checkpoint`: orbax checkpoints of the state and the data position.
- `train.metrics`: metrics.jsonl, TensorBoard event files, the progress bar, MFU.
"""
