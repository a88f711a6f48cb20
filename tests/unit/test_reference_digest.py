"""The reference teacher's output, pinned: a sha256 per supported task over every record it writes for the
task's whole train split (AQuA: its bundled test split, the train file is not bundled) with completion indices
0-3 at temperature 0.7, i.e. the greedy rationale and variants 1-3. Every record field enters except the
timestamp. A changed digest means the rationales changed: bump `VERSION` (the teach stage hash) on purpose
and re-pin, never by accident."""

import asyncio
import hashlib
import json
from dataclasses import asdict

import pytest

from ftcot_jax.tasks import load_task
from ftcot_jax.teacher import reference as ref
from ftcot_jax.teacher.backend import TeachItem

VARIANTS = [0, 1, 2, 3]

DIGESTS = {
    "gsm8k": "4baa9ce64b4741be64d2446037ef6ff26a34649c49935277305bb533fa3f8735",
    "aqua": "94acef20357f57cdc91319e2e5d69aa95369d3f82d502d4c515df14d9e276017",
    "strategy_qa": "0ac6b51d3f03048cf8f9a7beab9f4c75df110f97b0146d203ed2881b9b33ab3d",
    "single_eq": "bb4b72cfc6691c5b40568a2b6f1031cf951aca470a73b7b117deda7be9d74ab6",
    "addsub": "ba61a4f5ece32fe3735d546322a99b309f72ef8d071929848eba9dbf137396f2",
    "multiarith": "992b26eaf396651d29fd4f7e0180733427e77247e27126737067a48237a7cab3",
    "svamp": "e87e2f1911b17ccc137caa0b6a1bd4b29beca4a98bcb0cf671f3e4f229d44325",
    "coin_flip": "35c41e1bef1d0acc5908ca70faf958d81f887d7eb18acf753b6dc0cf951378b7",
    "last_letter_concatenation": "2dd87375822b84c3d1c3e3d87a6e948b3a3f93ba07f8409ac88c7fb2ec70f7af",
    "tracking_shuffled_objects": "6504a7de5f1fc879545d6f45446a8968eb8f89de666f894a4090cbc394b001ab",
}


def _digest(task: str) -> str:
    backend = ref.ReferenceBackend()
    part = "test" if task == "aqua" else "train"
    items = [TeachItem(task, part, ex.sample_index, ex.question, ex.answer) for ex in load_task(task).split(part)]

    async def records():
        return [r for it in items for r in await backend.teach(it, VARIANTS, 0.7)]

    h = hashlib.sha256()
    recs = asyncio.run(records())
    assert len(recs) == len(items) * len(VARIANTS)
    for rec in recs:
        fields = asdict(rec)
        del fields["timestamp"]
        h.update(json.dumps(fields, sort_keys=True, ensure_ascii=False).encode("utf-8") + b"\n")
    return h.hexdigest()


def test_every_supported_task_is_pinned():
    assert sorted(DIGESTS) == sorted(ref.SUPPORTED_TASKS)


@pytest.mark.parametrize("task", sorted(DIGESTS))
def test_reference_output_is_unchanged(task):
    assert _digest(task) == DIGESTS[task]
