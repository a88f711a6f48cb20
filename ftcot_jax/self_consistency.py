"""Self-consistency (Wang et al., 2022): K sampled completions of a question, each parsed with the task's
reference rule (`scoring.evaluate_completion`), and a vote over their answers.

- maj@K: the most frequent parsed answer is the prediction; a sample with no parsed answer does not vote;
  a tie goes to the answer that appeared first; no vote at all (nothing parsed) is wrong.
- pass@K: some sample's answer is correct.
- K = 1 is greedy scoring of that one sample: maj@1 = pass@1 = its `correct`.

    votes = [vote(sample_records) for sample_records in per_question]   # one record per question
    summarize_votes(votes)   # {"samples": K, "maj_accuracy", "pass_accuracy", "maj_by_k": {"1": ..}}
"""

from __future__ import annotations

from collections.abc import Sequence


def check_samples(samples: int, temperature: float) -> None:
    """ValueError for a self-consistency setting no evaluation can run with."""
    if not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be an integer >= 1, got {samples!r}")
    if samples > 1 and temperature <= 0:
        raise ValueError(
            f"samples={samples} with temperature {temperature}: greedy samples are all the same; "
            "expected a temperature > 0 (e.g. 0.7)"
        )


def majority(predictions: Sequence) -> tuple[object | None, list[list]]:
    """(the winning answer or None, [[answer, votes], ...] in order of first appearance). None does not vote;
    among answers with the most votes the one that appeared first wins."""
    counts: dict = {}
    for p in predictions:
        if p is not None:
            counts[p] = counts.get(p, 0) + 1
    tally = [[a, n] for a, n in counts.items()]
    if not tally:
        return None, tally
    best = max(n for _, n in tally)
    return next(a for a, n in tally if n == best), tally


def vote(sample_records: Sequence[dict]) -> dict:
    """One question's vote from its K sample records (`scoring.evaluate_completion` fields plus completion and
    finish_reason). The majority answer is correct when a sample with that answer is."""
    if not sample_records:
        raise ValueError("a vote needs at least one sample record")
    winner, tally = majority([r["prediction"] for r in sample_records])
    maj_correct = winner is not None and any(r["correct"] for r in sample_records if r["prediction"] == winner)
    return {
        "samples": [
            {k: r.get(k) for k in ("completion", "finish_reason", "prediction", "correct")} for r in sample_records
        ],
        "votes": tally,
        "majority": winner,
        "maj_correct": bool(maj_correct),
        "pass_correct": any(bool(r["correct"]) for r in sample_records),
    }


def ks_up_to(k: int) -> list[int]:
    """1, 2, 4, ... up to k, and k itself: the prefixes an accuracy-against-K curve reads."""
    out = [1]
    while out[-1] * 2 <= k:
        out.append(out[-1] * 2)
    return out if out[-1] == k else out + [k]


def summarize_votes(votes: Sequence[dict]) -> dict:
    """maj@K and pass@K over questions (K = samples per question), and maj@k of the first k samples of
    each question for k in `ks_up_to(K)` (keys are strings: the summary is JSON)."""
    if not votes:
        return {"samples": 0, "maj_accuracy": 0.0, "pass_accuracy": 0.0, "maj_by_k": {}}
    k = len(votes[0]["samples"])
    if any(len(v["samples"]) != k for v in votes):
        raise ValueError("every question's vote needs the same number of samples")
    n = len(votes)
    by_k = {str(j): sum(vote(v["samples"][:j])["maj_correct"] for v in votes) / n for j in ks_up_to(k)}
    return {
        "samples": k,
        "maj_accuracy": sum(v["maj_correct"] for v in votes) / n,
        "pass_accuracy": sum(v["pass_correct"] for v in votes) / n,
        "maj_by_k": by_k,
    }
