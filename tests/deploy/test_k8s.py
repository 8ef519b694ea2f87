"""deploy/k8s: every manifest validates offline with kubernetes-validate (strict: unknown fields are errors),
and the pieces fit together (kustomize resources, checksum, Secret keys, Services, probes, GPUs)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from council.policy.schema import Policy

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
BASE = K8S / "base"
VALIDATE = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent)) or shutil.which(
    "kubernetes-validate")
# kubernetes-validate knows the Kubernetes API only: these kinds have no schema there.
NOT_KUBERNETES = {"Kustomization", "Component", "ServiceMonitor"}


def manifests() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml"))


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def base_objects() -> list[dict]:
    listed = yaml.safe_load((BASE / "kustomization.yaml").read_text())["resources"]
    return [d for name in listed for d in docs(BASE / name)]


def by_kind(kind: str) -> list[dict]:
    return [d for d in base_objects() if d["kind"] == kind]


@pytest.mark.skipif(VALIDATE is None, reason="kubernetes-validate is missing (pip install -e '.[test]')")
@pytest.mark.parametrize("path", manifests(), ids=lambda p: str(p.relative_to(K8S)))
def test_kubernetes_validate_accepts_the_manifest(path: Path) -> None:
    assert VALIDATE is not None
    proc = subprocess.run([VALIDATE, "--strict", str(path)], capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "ERROR" not in out, out
    for line in out.splitlines():
        if line.startswith("WARN"):
            kind = re.search(r"schema for kind (\w+)", line)
            assert kind and kind.group(1) in NOT_KUBERNETES, line
    kinds = [d["kind"] for d in docs(path)]
    passed = out.count(" passed for resource ")
    assert passed == sum(k not in NOT_KUBERNETES for k in kinds), out


@pytest.mark.skipif(VALIDATE is None, reason="kubernetes-validate is missing (pip install -e '.[test]')")
def test_the_validator_rejects_a_bad_manifest(tmp_path: Path) -> None:
    bad = docs(BASE / "router.yaml")[0]
    bad["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = bad["spec"]["template"]["spec"][
        "containers"][0].pop("livenessProbe")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    proc = subprocess.run([VALIDATE, "--strict", str(tmp_path / "bad.yaml")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0 and "livenesProbe" in proc.stdout + proc.stderr


def test_kustomize_layout_lists_every_file_and_they_exist() -> None:
    for kust in K8S.rglob("kustomization.yaml"):
        doc = yaml.safe_load(kust.read_text())
        for entry in doc.get("resources", []) + doc.get("components", []):
            assert (kust.parent / entry).exists(), (kust, entry)
    listed = set(yaml.safe_load((BASE / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}


def test_the_policy_checksum_annotation_matches_the_configmap() -> None:
    (cm,) = by_kind("ConfigMap")
    checksum = hashlib.sha256(json.dumps(cm["data"], sort_keys=True).encode()).hexdigest()
    for dep in by_kind("Deployment"):
        if dep["metadata"]["name"] == "council-redis":
            continue
        got = dep["spec"]["template"]["metadata"]["annotations"]["checksum/policy"]
        assert got == checksum, f"{dep['metadata']['name']}: checksum/policy should be {checksum}"


def test_the_policies_parse_and_name_the_services_and_secret_keys() -> None:
    (cm,) = by_kind("ConfigMap")
    (secret,) = by_kind("Secret")
    services = {s["metadata"]["name"] for s in by_kind("Service")}
    for key, text in cm["data"].items():
        policy = Policy.model_validate(yaml.safe_load(text))
        assert policy.state == "redis://council-redis:6379/0" and "council-redis" in services
        assert policy.server.cluster_key_env in secret["stringData"]
        assert all(k.env in secret["stringData"] for k in policy.server.api_keys) and policy.server.api_keys
        if key.startswith("host-"):
            host = re.match(r"http://([^:/]+):8080$", policy.server.advertise_url or "")
            assert host and host.group(1) in services, key


def test_gpu_hosts_request_gpus_and_every_pod_has_the_probes() -> None:
    deployments = {d["metadata"]["name"]: d for d in by_kind("Deployment")}
    assert {"council-gpu-a", "council-gpu-b", "council-router", "council-redis"} <= set(deployments)
    for name, dep in deployments.items():
        pod = dep["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        assert set(dep["spec"]["selector"]["matchLabels"].items()) <= set(pod["metadata"]["labels"].items())
        if name == "council-redis":
            continue
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        start = container["startupProbe"]
        budget = start["periodSeconds"] * start["failureThreshold"]
        if name.startswith("council-gpu-"):
            assert budget >= 600, f"{name}: a cold load needs a startup budget of minutes, not {budget}s"
            res = container["resources"]
            assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"] == 1
            assert "--role" in container["args"] and container["args"][container["args"].index("--role") + 1] == "host"
        assert {"name": "council-keys"} in [e.get("secretRef") for e in container["envFrom"]]
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    for svc in by_kind("Service"):
        sel = set(svc["spec"]["selector"].items())
        assert any(sel <= set(d["spec"]["template"]["metadata"]["labels"].items()) for d in deployments.values()), svc
    pdbs = by_kind("PodDisruptionBudget")
    assert any(p["spec"]["selector"]["matchLabels"].get("app.kubernetes.io/component") == "router" for p in pdbs)


def test_the_optional_servicemonitor_scrapes_metrics_with_the_api_key() -> None:
    (sm,) = docs(K8S / "components/servicemonitor/servicemonitor.yaml")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1" and sm["kind"] == "ServiceMonitor"
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics" and endpoint["port"] == "http"
    assert endpoint["authorization"]["credentials"] == {"name": "council-keys", "key": "COUNCIL_API_KEY"}
    labels = set(sm["spec"]["selector"]["matchLabels"].items())
    assert all(labels <= set(s["metadata"]["labels"].items()) for s in by_kind("Service")
               if s["metadata"]["name"].startswith("council") and s["metadata"]["name"] != "council-redis")
