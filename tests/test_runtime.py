"""The Ray/RLlib runtime on in-process Ray: every registered algorithm trains, checkpoints resume."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from run_checks import check_bleu, steps_of

from rayseq.algorithms.mle import PlateauSchedule, mle_loss
from rayseq.algorithms.raml import raml_loss
from rayseq.config import build_run_config
from rayseq.registry import ALGORITHMS, SUPERVISED, get_algorithm

pytestmark = pytest.mark.ray


def _toy_config(algo, tmp_path, *overrides, **cli):
    entry = get_algorithm(algo)
    return build_run_config(algo, entry.config_cls, "cpu", "toy", ["epochs=2", *overrides], out=str(tmp_path / algo), **cli)


@pytest.mark.parametrize("algo", sorted(a for a, e in ALGORITHMS.items() if e.kind == SUPERVISED))
def test_smoke_every_registered_supervised_algorithm(algo, tmp_path, ray_session):
    """A seconds-long run on the toy task: metrics, checkpoints, actor files, curve and results."""
    from rayseq.train import train

    cfg = _toy_config(algo, tmp_path)
    results = train(cfg)
    run = tmp_path / algo
    for name in ("run.json", "metrics.jsonl", "actor_best.pt", "actor_latest.pt", "curve.png", "results.json", "checkpoint"):
        assert (run / name).exists(), name
    assert results["epochs"] == 2 and results["updates"] == 2 * 3000 // 50  # 2 epochs of the 3000 toy pairs, batch 50
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss/actor"] for r in records if "loss/actor" in r]
    assert losses and all(np.isfinite(losses))
    assert steps_of(records, "loss/actor") == list(range(20, 121, 20))  # every log_every = 20 updates, once
    assert steps_of(records, "bleu/valid") == [60, 120]
    # the lr schedule replayed on the logged validations gives the logged lr and the checkpoint's schedule
    a = cfg.algo_config
    replay = PlateauSchedule(lr=a.lr, decay=a.lr_decay, max_decays=a.max_decays)
    valid = [r for r in records if "bleu/valid" in r]
    for r in valid:
        replay.step(r["bleu/valid"])
        assert r["lr"] == replay.lr
    state = json.loads((run / "checkpoint" / "trainer_state.json").read_text())
    assert state["schedule"] == replay.state_dict() and state["step"] == results["updates"]
    assert results["best_epoch"] == max(r["epoch"] for r in valid if r["bleu/valid"] == replay.best)
    check_bleu(run, results, cfg)


def test_resume_gives_the_same_next_updates(tmp_path, ray_session):
    """Checkpoint after epoch 1, restore in a fresh algorithm: epoch 2's losses are the same."""
    from rayseq.data.tasks import load_task
    from rayseq.run_dir import restore_checkpoint, save_checkpoint
    from rayseq.runtime.builders import build_supervised_algorithm

    cfg = _toy_config("raml", tmp_path, "model.dropout=0.0", "log_every=1")
    task = load_task("toy")
    tmp_path.joinpath("raml").mkdir()
    first = build_supervised_algorithm(cfg, task)
    try:
        first.train()
        first.set_lr(0.3)
        save_checkpoint(first, tmp_path / "raml", {"epoch": 1})
        saved = (first.num_updates, first.tokens_total)
        first.pop_train_log()
        first.train()
        log = first.pop_train_log()
        expected = [r["loss/actor"] for r in log]
    finally:
        first.stop()
    assert saved[0] == 60 and [r["step"] for r in log] == list(range(61, 121))  # batch 50: 60 updates an epoch
    second = build_supervised_algorithm(cfg, task)
    try:
        assert restore_checkpoint(second, tmp_path / "raml") == {"epoch": 1}
        assert (second.num_updates, second.tokens_total) == saved  # the counters' set_state round trip
        second.train()
        log2 = second.pop_train_log()
        got = [r["loss/actor"] for r in log2]
    finally:
        second.stop()
    assert [(r["step"], r["epoch"], r["tokens/total"]) for r in log2] == [(r["step"], r["epoch"], r["tokens/total"]) for r in log]
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_learner_loss_is_mle_and_raml():
    """The learner's weighted sequence NLL equals mle_loss (w = 1) and raml_loss (softmax weights)."""
    from rayseq.algorithms.mle import sequence_nll

    torch.manual_seed(0)
    logits = torch.randn(6, 4, 7)
    targets = torch.tensor([[4, 5, 3, 0], [4, 3, 0, 0], [6, 6, 6, 3], [5, 3, 0, 0], [4, 4, 3, 0], [6, 3, 0, 0]])
    nll = sequence_nll(logits, targets)
    ones = torch.ones(6)
    assert torch.allclose((ones * nll).sum() / ones.sum(), mle_loss(logits, targets).loss)
    w = torch.softmax(torch.randn(2, 3), dim=1)  # 2 sources x K = 3 samples
    flat = w.reshape(-1)
    assert torch.allclose((flat * nll).sum() / flat.sum(), raml_loss(logits, targets, w).loss)


def test_remote_learner(tmp_path, ray_session):
    """num_learners=1: the learner runs in its own Ray actor (the cluster layout); lr and weights sync."""
    from rayseq.train import train

    cfg = _toy_config("mle", tmp_path, "epochs=1", num_learners=1)
    results = train(cfg)
    assert results["updates"] == 60 and (tmp_path / "mle" / "actor_best.pt").exists()
    check_bleu(tmp_path / "mle", results, cfg)
