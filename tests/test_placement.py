"""Placement on a real local multi-node cluster: a head (driver only, no CPUs), a node that advertises
one GPU and a CPU node, each a ``ray start`` with its own temp dir and ports, their resources taken
from ``clusters/local.yaml``. An actor-critic training job with one remote learner gets its learner
actor on the GPU node and its rollout workers on the CPU node, and trains.

This machine has no CUDA, so the learner cannot ask for the GPU itself (Ray Train would set up NCCL
and the learner would move its module to CUDA): it asks for the GPU node's custom resource
(``learner_resource=gpu_learner``, RLlib's ``custom_resources_per_learner``) and trains on the CPU.
The rollout workers ask only for CPUs; Ray keeps them off GPU nodes while CPU nodes have room.
Everything is stopped by PID."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from _cluster_head import LocalHead, LocalWorker

pytestmark = pytest.mark.ray

LOCAL_YAML = Path(__file__).resolve().parents[1] / "clusters" / "local.yaml"

_DRIVER = r"""
import json, sys, time
import ray

ray.init(address=sys.argv[1], log_to_driver=False)
deadline = time.monotonic() + 180
while sum(n["Alive"] for n in ray.nodes()) < int(sys.argv[2]):
    if time.monotonic() > deadline:
        raise SystemExit(f"only {[n['Resources'] for n in ray.nodes() if n['Alive']]} joined")
    time.sleep(0.5)

from rayseq.algorithms.erac import ERACConfig
from rayseq.config import build_run_config
from rayseq.data.tasks import load_task
from rayseq.runtime.builders import build_actor_critic_algorithm

cfg = build_run_config("erac", ERACConfig, "cpu", "toy", ["batch_size=10", f"learner_resource={sys.argv[4]}"],
                       out=sys.argv[3], num_learners=1, num_gpus_per_learner=0, num_rollout_workers=2, envs_per_worker=2)
algo = build_actor_critic_algorithm(cfg, load_task("toy"))
node_id = lambda *_: ray.get_runtime_context().get_node_id()
learners = [r.get() for r in algo.learner_group.foreach_learner(lambda learner: (node_id(), str(learner._device)))]
runners = algo.env_runner_group.foreach_env_runner(node_id, local_env_runner=False)
algo.set_stage("joint")
algo.updates_per_iteration = 1
algo.train()
print(json.dumps({
    "nodes": {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]},
    "learners": learners, "runners": runners, "updates": algo.num_updates,
}))
algo.stop()
"""


def _node_resources(node_type: str) -> dict[str, float]:
    return yaml.safe_load(LOCAL_YAML.read_text())["available_node_types"][node_type]["resources"]


def test_learner_on_the_gpu_node_and_rollout_workers_on_cpu_nodes(tmp_path):
    head_res, gpu_res, cpu_res = (_node_resources(t) for t in ("ray.head.default", "gpu_learner", "cpu_rollout"))
    assert gpu_res.get("GPU", 0) >= 1 and not cpu_res.get("GPU") and cpu_res["CPU"] >= 2
    [learner_resource] = [k for k in gpu_res if k not in ("CPU", "GPU")]
    head = LocalHead(num_cpus=int(head_res.get("CPU", 0)), block=False)
    nodes = []
    try:
        nodes.append(LocalWorker(head, num_cpus=int(gpu_res.get("CPU", 0)), num_gpus=int(gpu_res["GPU"]),
                                 resources={learner_resource: gpu_res[learner_resource]}))
        nodes.append(LocalWorker(head, num_cpus=int(cpu_res["CPU"])))
        driver = subprocess.run([sys.executable, "-c", _DRIVER, head.address, "3", str(tmp_path / "run"), learner_resource],
                                env=head.env, capture_output=True, text=True, timeout=600, check=False)
        assert driver.returncode == 0, driver.stderr[-4000:]
        r = json.loads(driver.stdout.strip().splitlines()[-1])
    finally:
        for node in nodes:
            node.stop()
        head.stop()
    gpu_nodes = [nid for nid, res in r["nodes"].items() if res.get("GPU")]
    cpu_nodes = [nid for nid, res in r["nodes"].items() if not res.get("GPU") and res.get("CPU")]
    assert len(r["nodes"]) == 3 and len(gpu_nodes) == 1 and len(cpu_nodes) == 1
    [(learner_node, device)] = r["learners"]
    assert learner_node == gpu_nodes[0] and device == "cpu"  # pinned by the GPU node's resource; no CUDA here
    assert r["runners"] and all(node == cpu_nodes[0] for node in r["runners"]), r["runners"]
    assert r["updates"] == 1
    print(json.dumps({"learner_device": device, "learner_node": learner_node[:8], "runner_nodes": [n[:8] for n in r["runners"]]}))


def test_learner_resource_needs_a_remote_learner():
    from rayseq.algorithms.erac import ERACConfig
    from rayseq.config import ConfigError, build_run_config

    cfg = build_run_config("erac", ERACConfig, "cpu", "toy", ["learner_resource=gpu_learner"], num_learners=1)
    assert cfg.custom_resources_per_learner() == {"gpu_learner": 0.001}
    assert build_run_config("erac", ERACConfig, "cpu", "toy").custom_resources_per_learner() == {}
    with pytest.raises(ConfigError, match="learner_resource='gpu_learner' with num_learners=0"):
        build_run_config("erac", ERACConfig, "cpu", "toy", ["learner_resource=gpu_learner"], num_learners=0)
