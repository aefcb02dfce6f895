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


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["train", "--algo", "nope"], "registered"),
        (["train", "--algo", "mle", "--task", "wmt"], "task"),
        (["train", "--algo", "mle", "--preset", "fast"], "preset"),
        (["train", "--algo", "mle", "colour=red"], "colour"),
        (["train", "--algo", "mle", "epochs=many"], "epochs"),
        (["train", "--algo", "mle", "algo.lr=-1"], "lr"),
        (["train", "--algo", "mle", "--task", "iwslt14", "--data-dir", "/nonexistent/iwslt"], "/nonexistent/iwslt"),
        (["train"], "--algo"),
    ],
)
def test_train_bad_input_is_one_clear_line(argv, needle, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path / "run")] if argv[1:] else argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err


def test_train_refuses_an_output_dir_of_a_different_run(capsys, tmp_path):
    from rayseq.config import build_run_config, to_dict
    from rayseq.registry import get_algorithm
    from rayseq.run_dir import prepare_run_dir

    other = build_run_config("raml", get_algorithm("raml").config_cls, "cpu", "toy", out=str(tmp_path / "run"))
    prepare_run_dir(tmp_path / "run", to_dict(other), resume=False)
    assert main(["train", "--algo", "mle", "--task", "toy", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "different run" in err
