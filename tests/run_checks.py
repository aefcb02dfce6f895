"""Exact checks of a finished run directory, shared by the run-level tests (not a test module).

A run's numbers must agree with each other: the best validation BLEU in ``results.json`` is the
best one logged in ``metrics.jsonl`` and the one recorded in ``actor_best.pt``; its test BLEU is
what ``rayseq eval RUN_DIR`` gives for that actor; the logged steps of each kind of record are
exactly the steps the schedule says, each once.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from rayseq.actor_io import load_actor
from rayseq.evaluation.score import evaluate
from rayseq.metrics import BLEU_TEST, BLEU_VALID, read_metrics
from rayseq.run_dir import read_results


def check_bleu(run_dir: Path, results: Mapping[str, Any], cfg: Any) -> None:
    """results.json ↔ metrics.jsonl ↔ actor_best.pt ↔ a fresh ``evaluate`` of the run."""
    on_disk = read_results(run_dir)
    assert on_disk == json.loads(json.dumps(results)), "train() returned something else than results.json"
    records = read_metrics(run_dir)
    logged = [r[BLEU_VALID] for r in records if BLEU_VALID in r]
    assert logged, f"no {BLEU_VALID} logged in {run_dir}"
    assert results[BLEU_VALID] == max(logged), (results[BLEU_VALID], logged)
    assert load_actor(run_dir / "actor_best.pt").meta[BLEU_VALID] == max(logged)
    fresh = evaluate(run_dir, split="test", beam=cfg.valid_beam, max_len=cfg.max_decode_len, progress=False)
    assert set(results["test"]) == set(fresh), (sorted(results["test"]), sorted(fresh))
    for key, value in fresh.items():
        if key in ("seconds", "decode_tokens_per_s"):
            continue  # timings
        if isinstance(value, float):
            assert abs(results["test"][key] - value) <= 1e-9, (key, results["test"][key], value)
        else:
            assert results["test"][key] == json.loads(json.dumps(value)), (key, results["test"][key], value)
    tested = [r[BLEU_TEST] for r in records if BLEU_TEST in r]
    assert tested[-1] == results["test"]["bleu"], (tested, results["test"]["bleu"])


def steps_of(records: Iterable[Mapping[str, Any]], key: str) -> list[int]:
    """The steps of the records that carry ``key``, in log order."""
    return [int(r["step"]) for r in records if key in r]


def check_steps(run_dir: Path, key: str, expected: Iterable[int]) -> None:
    """The records carrying ``key`` were logged at exactly ``expected`` steps, in order, once each."""
    got = steps_of(read_metrics(run_dir), key)
    assert got == list(expected), f"{key} logged at steps {got}, expected {list(expected)}"
