"""The `rayseq` command line: benchmarks print one JSON line, user errors one clear line."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rayseq.cli import main


def test_bench_reward_json_agrees_with_sacrebleu(capsys):
    assert main(["bench", "reward", "--json", "--batch", "16", "--repeats", "2"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(out) >= {"batch", "ours_prefix_bleu_per_s", "sacrebleu_prefix_bleu_per_s", "speedup", "max_abs_diff"}
    assert out["batch"] == 16 and out["max_abs_diff"] <= 1e-12


def test_console_script_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "rayseq.cli", "--help"], capture_output=True, text=True, check=True)
    assert "bench" in proc.stdout and "data" in proc.stdout


def test_prepare_iwslt14_missing_archive_is_one_clear_line(tmp_path, capsys):
    assert main(["data", "prepare-iwslt14", str(tmp_path / "nope.tgz"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope.tgz" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv", [["bench", "reward", "--smooth", "plus2"], ["nope"]])
def test_bad_arguments_exit_2(argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
