"""GPU checks of the actor-critic learner (skipped without CUDA; run them on a GPU machine)."""
from __future__ import annotations

import math

import pytest
import torch
from run_checks import check_bleu

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
def test_packed_losses_on_cuda_equal_cpu() -> None:
    from test_actor_critic import (
        _module_and_batch,  # tests/ is on sys.path under pytest
    )

    from rayseq.algorithms.erac import ERACConfig
    from rayseq.runtime.ac_learner import packed_losses

    module, b = _module_and_batch(2)
    module.stage = "joint"
    erac = ERACConfig(lambda_var=0.01)
    cpu_total, cpu_parts = packed_losses(module.forward_train(b), b, erac, joint=True)
    module = module.cuda()
    bc = {k: v.cuda() for k, v in b.items()}
    gpu_total, gpu_parts = packed_losses(module.forward_train(bc), bc, erac, joint=True)
    assert math.isclose(float(cpu_total.detach()), float(gpu_total.detach().cpu()), rel_tol=1e-4)
    for k, v in cpu_parts.items():
        assert math.isclose(v, gpu_parts[k], rel_tol=1e-3, abs_tol=1e-5), k
    gpu_total.backward()
    assert all(torch.isfinite(p.grad).all() for p in module.critic.parameters() if p.grad is not None)


@cuda
@pytest.mark.ray
def test_erac_learner_updates_on_the_gpu(tmp_path) -> None:
    """The RLlib learner of ERAC on cuda: the whole pipeline on the toy task, learner on the GPU."""
    from rayseq.algorithms.mle import MLEConfig
    from rayseq.config import build_run_config
    from rayseq.registry import get_algorithm
    from rayseq.train import train

    mle = tmp_path / "mle"
    train(build_run_config("mle", MLEConfig, "cpu", "toy", ["epochs=1"], out=str(mle)))
    cfg = build_run_config(
        "erac", get_algorithm("erac").config_cls, "cpu", "toy",
        [f"algo.actor_init={mle}", "algo.critic_pretrain_epochs=0.2", "algo.joint_epochs=0.3", "algo.valid_every=5"],
        out=str(tmp_path / "erac"), num_rollout_workers=2, envs_per_worker=16,
    )
    assert cfg.resolved_num_gpus_per_learner() == 1.0
    results = train(cfg)
    assert (results["critic_updates"], results["joint_updates"]) == (12, 18)  # 0.2 and 0.3 × 3000 pairs / 50
    check_bleu(tmp_path / "erac", results, cfg)


@cuda
@pytest.mark.parametrize("stage", ["qnet", "actor"])
def test_vaml_packed_losses_on_cuda_equal_cpu(stage: str) -> None:
    import numpy as np
    from test_vaml import _module

    from rayseq.algorithms.supervised_rows import qnet_episodes, vaml_actor_rows
    from rayseq.algorithms.vaml import VAMLConfig
    from rayseq.rollout import collate
    from rayseq.runtime.vaml import packed_vaml_losses

    v = VAMLConfig(num_corruptions=2, num_samples=2, mix_mode="expected")
    rng = np.random.default_rng(0)
    refs = [np.array([4, 5, 6, 7]), np.array([9, 10])]
    if stage == "qnet":
        cols = collate(qnet_episodes([np.array([4, 5])] * 2, refs, v, 14, rng))
    else:
        cols = vaml_actor_rows([np.array([4, 5, 6]), np.array([7, 8])], refs, v, 14, rng)
    b = {k: torch.as_tensor(a) for k, a in cols.items()}
    module = _module(stage)
    cpu_loss, _ = packed_vaml_losses(module.forward_train(b), b, v, stage)
    module = module.cuda()
    bc = {k: t.cuda() for k, t in b.items()}
    gpu_loss, _ = packed_vaml_losses(module.forward_train(bc), bc, v, stage)
    assert math.isclose(float(cpu_loss.detach()), float(gpu_loss.detach().cpu()), rel_tol=1e-4)


@cuda
@pytest.mark.ray
def test_vaml_learner_on_the_gpu(tmp_path) -> None:
    from rayseq.algorithms.vaml import VAMLConfig
    from rayseq.config import build_run_config
    from rayseq.train import train

    cfg = build_run_config("vaml", VAMLConfig, "cpu", "toy", ["epochs=1", "algo.qnet_epochs=0.5"], out=str(tmp_path / "vaml"))
    assert cfg.resolved_num_gpus_per_learner() == 1.0
    results = train(cfg)
    assert results["qnet"]["updates"] == 30
    check_bleu(tmp_path / "vaml", results, cfg)
