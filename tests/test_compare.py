"""``rayseq compare`` (experiment form): runs, the Table-1-style summary, failures kept, reuse."""
from __future__ import annotations

import json

import pytest

from rayseq.commands.compare import CompareConfig, render_table, run_compare, summarize

pytestmark = pytest.mark.ray


def test_compare_tabulates_keeps_failures_and_reuses_finished_runs(tmp_path, ray_session):
    cc = CompareConfig(task="toy", algos=["mle", "raml"], seeds=1, preset="cpu", out=str(tmp_path / "cmp"),
                       overrides=["epochs=1", "raml:algo.tau=-1"])
    report = run_compare(cc)
    rows = {r["algo"]: r for r in report["rows"]}
    assert rows["mle"]["ok"] == 1 and 0.0 <= rows["mle"]["test_bleu"]["mean"] <= 100.0
    assert rows["raml"]["ok"] == 0 and "tau" in rows["raml"]["failed"][0]
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| mle | 1/1 |" in md and "FAILED" in md
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert [r["algo"] for r in saved["runs"]] == ["mle", "raml"]
    again = run_compare(cc)  # the finished MLE run is read back, not retrained
    assert again["runs"][0].get("reused") and again["runs"][0]["test_bleu"] == report["runs"][0]["test_bleu"]


def test_summary_statistics_and_errors():
    cc = CompareConfig(task="toy", algos=["mle"], seeds=2, out="x")
    recs = [{"algo": "mle", "seed": s, "status": "ok", "test_bleu": b, "valid_bleu": b, "wall_time_s": 60.0, "run_dir": "x"}
            for s, b in ((1, 10.0), (2, 20.0))]
    row = summarize(cc, recs)[0]
    assert row["test_bleu"] == {"mean": 15.0, "std": pytest.approx(7.0710678), "min": 10.0, "max": 20.0}
    assert "15.00 ± 7.07" in render_table(cc, [row], recs)
    with pytest.raises(ValueError, match="registered"):
        CompareConfig(task="toy", algos=["nope"])
    with pytest.raises(ValueError, match="not a registered algorithm"):
        CompareConfig(task="toy", algos=["mle"], overrides=["eracc:algo.tau=0.1"])
    CompareConfig(task="toy", algos=["mle"], overrides=["erac:algo.tau=0.1"])  # for a run not in this comparison: ignored
