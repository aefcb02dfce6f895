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


def test_captioning_runs_read_back_with_cider_and_the_surrogate_label(tmp_path):
    """A finished captioning run (the fields ``rayseq train --task coco`` writes) gives a CIDEr-D column
    and the surrogate warning; a translation-only table has neither."""
    from rayseq.commands.compare import _run_one

    run = tmp_path / "mle-seed1"
    run.mkdir()
    (run / "results.json").write_text(json.dumps({
        "bleu/valid": 14.4, "wall_time_s": 120.0,
        "test": {"bleu": 13.36, "bleu_4": 13.36, "cider_d": 0.396, "features": "surrogate"}}))
    cc = CompareConfig(task="coco", algos=["mle", "raml"], seeds=1, out=str(tmp_path), report_only=True)
    recs = [_run_one(cc, "mle", 1, run, None), _run_one(cc, "raml", 1, tmp_path / "raml-seed1", None)]
    assert recs[0]["status"] == "ok" and recs[0]["surrogate"] and recs[0]["test_cider_d"] == 0.396
    md = render_table(cc, summarize(cc, recs), recs)
    assert "test CIDEr-D mean ± std" in md and "| 0.396 ± 0.000 |" in md
    assert "Surrogate image features" in md
    header, sep, mle_row, raml_row = md.splitlines()[2:6]
    assert header.count("|") == sep.count("|") == mle_row.count("|") == raml_row.count("|")
    cc_mt = CompareConfig(task="toy", algos=["mle"], seeds=1, out=str(tmp_path))
    rec = {"algo": "mle", "seed": 1, "status": "ok", "test_bleu": 10.0, "valid_bleu": 10.0, "wall_time_s": 1.0, "run_dir": "x"}
    md_mt = render_table(cc_mt, summarize(cc_mt, [rec]), [rec])
    assert "CIDEr" not in md_mt and "Surrogate" not in md_mt
