"""The Fine-tune-CoT pipeline behind `ftcot run`, `ftcot curate` and `ftcot report`.

- `run.py`: the stages (teach, curate, prepare student, zero-shot, train, collect) and `run()`;
- `stages.py`: stages.json bookkeeping and the stage hashes that decide what is current;
- `curate.py`: teacher cache -> fine-tune sample files; the run's curation methods;
- `report.py`: the paper-style tables and plots from run directories;
- `paper.py`: the paper's students, its grid of runs and its numbers (paper_results.json).

The schema is `ftcot_jax.config.RunConfig`. Run directory layout (every path relative to `run_dir`):

    config.json                      the resolved RunConfig of the last invocation
    stages.json                      per stage: hash of the config that produced it, upstream hashes, outputs
    pipeline.log                     one line per stage: ran / skipped, seconds
    teacher_cache/                   teacher answers (unless teacher.cache_dir points elsewhere)
    samples/<task>__<key>.tfrecord   curated fine-tune samples
    train/<task>/<key>/              the trainer's run dir (checkpoints, metrics.jsonl, predictions, results.json)
    eval/<task>/<key>.json           test results per method (zero_shot, ft, ft_cot, ft_cot_t70_8aug, ...)
    report.md, plots/*.png           `ftcot report` output
"""
