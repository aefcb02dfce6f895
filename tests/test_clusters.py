"""clusters/ and docker/: offline validation of the cluster definitions and the Dockerfile.

Launcher YAMLs go through Ray's own ``prepare_config`` + ``validate_config`` (plus a check of the
provider keys); KubeRay manifests are checked against the fields KubeRay's CRD defines; the
Dockerfile is linted (base image = the pinned Ray version). Nothing here needs a cloud, Kubernetes
or a Docker engine.
"""
from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from rayseq.cluster.launcher import check_launcher_config, load_launcher_yaml

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER_YAMLS = sorted((ROOT / "clusters").glob("*.yaml"))
KUBERAY_YAMLS = sorted((ROOT / "clusters" / "kuberay").glob("*.yaml"))

# Fields of KubeRay's CRDs (apiVersion ray.io/v1), from the Go types the CRDs are generated from:
# github.com/ray-project/kuberay ray-operator/apis/ray/v1/raycluster_types.go (commit 3275ee09)
# and ray-operator/apis/ray/v1/rayjob_types.go (commit f6ef3f7b).
RAYJOB_SPEC = {
    "activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
    "clusterSelector", "submitterConfig", "managedBy", "deletionPolicy", "entrypoint", "runtimeEnvYAML",
    "jobId", "submissionMode", "entrypointResources", "entrypointNumCpus", "entrypointNumGpus",
    "ttlSecondsAfterFinished", "shutdownAfterJobFinishes", "suspend",
}
RAYCLUSTER_SPEC = {
    "suspend", "managedBy", "autoscalerOptions", "headServiceAnnotations", "enableInTreeAutoscaling",
    "gcsFaultToleranceOptions", "headGroupSpec", "rayVersion", "workerGroupSpecs",
}
GCS_FT_OPTIONS = {"redisUsername", "redisPassword", "externalStorageNamespace", "redisAddress"}
REDIS_CREDENTIAL = {"valueFrom", "value"}
HEAD_GROUP_SPEC = {"template", "headService", "enableIngress", "rayStartParams", "serviceType"}
WORKER_GROUP_SPEC = {
    "suspend", "groupName", "replicas", "minReplicas", "maxReplicas", "idleTimeoutSeconds",
    "rayStartParams", "template", "scaleStrategy", "numOfHosts",
}
AUTOSCALER_OPTIONS = {
    "resources", "image", "imagePullPolicy", "securityContext", "idleTimeoutSeconds", "upscalingMode",
    "env", "envFrom", "volumeMounts",
}
POD_TEMPLATE = {"metadata", "spec"}
TOP_LEVEL = {"apiVersion", "kind", "metadata", "spec"}


def _keys(obj: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(obj) - allowed)
    assert not unknown, f"{where}: field(s) {unknown} are not in KubeRay's CRD ({sorted(allowed)})"


def check_raycluster_spec(spec: dict, where: str) -> None:
    _keys(spec, RAYCLUSTER_SPEC, where)
    assert "headGroupSpec" in spec, f"{where}: headGroupSpec is required"
    head = spec["headGroupSpec"]
    _keys(head, HEAD_GROUP_SPEC, f"{where}.headGroupSpec")
    assert {"template", "rayStartParams"} <= set(head), f"{where}.headGroupSpec: template and rayStartParams are required"
    _keys(head["template"], POD_TEMPLATE, f"{where}.headGroupSpec.template")
    for i, group in enumerate(spec.get("workerGroupSpecs", [])):
        w = f"{where}.workerGroupSpecs[{i}]"
        _keys(group, WORKER_GROUP_SPEC, w)
        assert {"groupName", "rayStartParams", "template", "minReplicas", "maxReplicas"} <= set(group), w
        _keys(group["template"], POD_TEMPLATE, f"{w}.template")
    if "autoscalerOptions" in spec:
        _keys(spec["autoscalerOptions"], AUTOSCALER_OPTIONS, f"{where}.autoscalerOptions")
    if "gcsFaultToleranceOptions" in spec:
        ft = spec["gcsFaultToleranceOptions"]
        _keys(ft, GCS_FT_OPTIONS, f"{where}.gcsFaultToleranceOptions")
        assert "redisAddress" in ft, f"{where}.gcsFaultToleranceOptions: redisAddress is required"
        for cred in ("redisUsername", "redisPassword"):
            if cred in ft:
                _keys(ft[cred], REDIS_CREDENTIAL, f"{where}.gcsFaultToleranceOptions.{cred}")


def check_kuberay_doc(doc: dict, where: str) -> None:
    _keys(doc, TOP_LEVEL, where)
    assert doc["apiVersion"] == "ray.io/v1", f"{where}: apiVersion {doc['apiVersion']!r}"
    if doc["kind"] == "RayJob":
        _keys(doc["spec"], RAYJOB_SPEC, f"{where}.spec")
        assert "rayClusterSpec" in doc["spec"] or "clusterSelector" in doc["spec"], where
        if "rayClusterSpec" in doc["spec"]:
            check_raycluster_spec(doc["spec"]["rayClusterSpec"], f"{where}.spec.rayClusterSpec")
    elif doc["kind"] == "RayCluster":
        check_raycluster_spec(doc["spec"], f"{where}.spec")
    else:
        raise AssertionError(f"{where}: kind {doc['kind']!r} is not a KubeRay resource")


def _kuberay_docs() -> list[tuple[str, dict]]:
    out = []
    for path in KUBERAY_YAMLS:
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc:
                out.append((f"{path.name}[{i}]", doc))
    return out


def _cluster_spec(doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


# ----------------------------------------------------------------------------- launcher YAMLs


def test_every_launcher_yaml_is_there():
    assert {p.name for p in LAUNCHER_YAMLS} >= {"gpu.yaml", "gcp.yaml", "local.yaml"}


@pytest.mark.parametrize("path", LAUNCHER_YAMLS, ids=lambda p: p.name)
def test_launcher_yaml_passes_ray_validation(path):
    prepared = check_launcher_config(load_launcher_yaml(path), str(path))
    types = prepared["available_node_types"]
    gpu = [n for n, t in types.items() if t["resources"].get("GPU", 0) >= 1]
    cpu_only = [n for n, t in types.items() if n != prepared["head_node_type"] and not t["resources"].get("GPU")]
    assert gpu, f"{path.name}: no GPU learner node type"
    assert cpu_only, f"{path.name}: no CPU rollout node type"
    assert types[prepared["head_node_type"]]["resources"].get("GPU", 0) == 0, "the head is a CPU node"
    assert prepared["idle_timeout_minutes"] > 0


@pytest.mark.parametrize("path", LAUNCHER_YAMLS, ids=lambda p: p.name)
@pytest.mark.parametrize(
    "mutate",
    [
        lambda c: c.update(idle_timout_minutes=5),  # misspelt top-level key
        lambda c: next(iter(c["available_node_types"].values())).update(min_worker=1),
        lambda c: c["provider"].update(regoin="us-east-1"),
        lambda c: c.update(docker={**c["docker"], "imag": "x"}),
    ],
    ids=["top-level", "node-type", "provider", "docker"],
)
def test_unknown_keys_fail(path, mutate):
    config = copy.deepcopy(load_launcher_yaml(path))
    mutate(config)
    with pytest.raises(ValueError, match=path.name):
        check_launcher_config(config, str(path))


@pytest.mark.parametrize("path", LAUNCHER_YAMLS, ids=lambda p: p.name)
def test_launcher_security(path):
    text = path.read_text()
    config = load_launcher_yaml(path)
    assert "0.0.0.0" not in text, f"{path.name}: binds a service to every interface"
    for port in ("8265", "6379"):
        assert not re.search(rf"(FromPort|ToPort)\s*:\s*{port}", text), f"{path.name}: opens port {port}"
    for perm in config["provider"].get("security_group", {}).get("IpPermissions", []):
        for port in (8265, 6379):
            lo, hi = perm.get("FromPort", 0), perm.get("ToPort", 65535)
            assert not lo <= port <= hi, f"{path.name}: the security group opens port {port}"
    for cmd in config.get("head_start_ray_commands", []):
        if "ray start" in cmd:
            assert "--dashboard-host=127.0.0.1" in cmd, f"{path.name}: dashboard must bind to 127.0.0.1"
    for cmd in config.get("head_start_ray_commands", []) + config.get("worker_start_ray_commands", []):
        if "ray start" in cmd:
            assert "RAY_AUTH_MODE=token" in cmd, f"{path.name}: token auth must stay on"
    if config["provider"]["type"] != "fake_multinode":
        assert config["docker"]["image"].startswith("rayproject/ray:" + _pinned_ray() + "-"), path.name


# ----------------------------------------------------------------------------- KubeRay


def test_kuberay_manifests_match_the_crd():
    docs = _kuberay_docs()
    assert docs, "no KubeRay manifest under clusters/kuberay/"
    for where, doc in docs:
        check_kuberay_doc(doc, where)


def test_kuberay_checker_rejects_unknown_fields():
    where, doc = _kuberay_docs()[0]
    bad = copy.deepcopy(doc)
    _cluster_spec(bad)["headGroupSpec"]["rayStartParam"] = {}
    with pytest.raises(AssertionError, match="rayStartParam"):
        check_kuberay_doc(bad, where)
    bad = copy.deepcopy(doc)
    _cluster_spec(bad)["gcsFaultToleranceOptions"]["redisPasword"] = {"value": "x"}
    with pytest.raises(AssertionError, match="redisPasword"):
        check_kuberay_doc(bad, where)


def test_kuberay_gpu_group_gcs_ft_and_secrets():
    for where, doc in _kuberay_docs():
        spec = _cluster_spec(doc)
        groups = spec["workerGroupSpecs"]
        gpu = [g for g in groups for c in g["template"]["spec"]["containers"]
               if "nvidia.com/gpu" in c.get("resources", {}).get("limits", {})]
        assert gpu, f"{where}: no GPU worker group"
        ft = spec["gcsFaultToleranceOptions"]
        assert "value" not in ft["redisPassword"], f"{where}: the Redis password must come from a secret"
        assert "secretKeyRef" in ft["redisPassword"]["valueFrom"], where
        assert not re.search(r"redis://[^@\s]*:[^@\s]+@", ft["redisAddress"]), f"{where}: password in the address"
        assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP", f"{where}: head exposed"
        assert spec["rayVersion"] == _pinned_ray()


def test_no_committed_secrets():
    files = [*LAUNCHER_YAMLS, *KUBERAY_YAMLS, ROOT / "docker" / "Dockerfile"]
    for path in files:
        text = path.read_text()
        assert not re.search(r"redis://[^@\s/]*:[^@\s/]+@", text), f"{path}: a Redis password in a URL"
        assert not re.search(r"(?i)(requirepass|password)[ \t]*[:=][ \t]*['\"]?[A-Za-z0-9]{6,}", text), f"{path}: a password"


# ----------------------------------------------------------------------------- Docker


def _pinned_ray() -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [d for d in deps if d.startswith("ray[")]
    return pin.split("==")[1]


def test_dockerfile_lint():
    lines = [ln.strip() for ln in (ROOT / "docker" / "Dockerfile").read_text().splitlines()]
    instructions = [ln for ln in lines if ln and not ln.startswith("#")]
    froms = [ln for ln in instructions if ln.upper().startswith("FROM ")]
    assert len(froms) == 1
    image = froms[0].split()[1]
    # tags: {ray version}-py{XY}-{cpu|gpu|cuXXX}; the project's Python floor is 3.11
    m = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-(gpu|cu\d+)", image)
    assert m, f"FROM {image}: not an official rayproject/ray GPU tag"
    assert m.group(1) == _pinned_ray(), f"FROM {image}: the image's Ray differs from pyproject's ray=={_pinned_ray()}"
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert (int(m.group(2)), int(m.group(3))) >= tuple(int(x) for x in requires.lstrip(">=").split(".")), requires
    ignored = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    for ln in instructions:
        if ln.upper().startswith("COPY "):
            srcs = [a for a in ln.split()[1:-1] if not a.startswith("--")]
            for src in srcs:
                assert (ROOT / src).exists(), f"Dockerfile COPY {src}: no such path"
                assert src not in ignored, f"Dockerfile COPY {src}: excluded by .dockerignore"
    for must in (".git", ".venv", "runs"):
        assert must in ignored, f".dockerignore must exclude {must}"


def test_dockerfile_installs_every_project_dependency():
    """The image installs the project with --no-deps, so each requirement of pyproject.toml except
    those the Ray image provides (ray, torch, numpy) must be in its pip line, with the same spec."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    text = (ROOT / "docker" / "Dockerfile").read_text()
    provided = ("ray[", "torch", "numpy")
    missing = [d for d in deps if not d.startswith(provided) and f'"{d}"' not in text]
    assert not missing, f"docker/Dockerfile does not install {missing} (pyproject.toml requires them)"
