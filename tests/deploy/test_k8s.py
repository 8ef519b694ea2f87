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
from urllib.parse import urlsplit

import pytest
import yaml

from council.cluster.store import expand_env
from council.policy.schema import Policy
from tests.servers import free_port, poll_ready

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
BASE = K8S / "base"
VALIDATE = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent)) or shutil.which(
    "kubernetes-validate")
# kubernetes-validate knows the Kubernetes API only: these kinds have no schema there.
NOT_KUBERNETES = {"Kustomization", "Component", "ServiceMonitor"}
REDIS_PASSWORD = "COUNCIL_REDIS_PASSWORD"


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


def test_the_policies_parse_and_name_the_services_and_secret_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    (cm,) = by_kind("ConfigMap")
    (secret,) = by_kind("Secret")
    services = {s["metadata"]["name"] for s in by_kind("Service")}
    monkeypatch.setenv(REDIS_PASSWORD, "0123456789abcdef0123456789abcdef")
    for key, text in cm["data"].items():
        policy = Policy.model_validate(yaml.safe_load(text))
        # The password is the Secret's, read from the pod's environment (envFrom) when the state opens.
        assert policy.state == f"redis://:${{{REDIS_PASSWORD}}}@council-redis:6379/0" and "council-redis" in services
        assert REDIS_PASSWORD in secret["stringData"]
        url = urlsplit(expand_env(policy.state))
        assert url.password == "0123456789abcdef0123456789abcdef" and url.hostname == "council-redis"
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
    # Two routers, each dashboard's history its own: one client's page and event stream from one router (README).
    front = next(s for s in by_kind("Service") if s["metadata"]["name"] == "council")
    assert front["spec"]["sessionAffinity"] == "ClientIP"
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


def _redis_container() -> dict:
    (dep,) = [d for d in by_kind("Deployment") if d["metadata"]["name"] == "council-redis"]
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    return container


def test_redis_requires_the_secrets_password_and_its_probes_send_it() -> None:
    """Before, Redis ran without a password: any pod that reached it could list a URL of its own in the member
    registry and receive users' prompts with the cluster key."""
    container = _redis_container()
    ref = {"secretKeyRef": {"name": "council-keys", "key": REDIS_PASSWORD}}
    env = {e["name"]: e.get("valueFrom") for e in container["env"]}
    assert env["REDIS_PASSWORD"] == ref and env["REDISCLI_AUTH"] == ref  # the probes' redis-cli sends it
    script = container["command"][-1]
    assert container["command"][:2] == ["sh", "-c"] and '--requirepass "$REDIS_PASSWORD"' in script
    assert 'test -n "$REDIS_PASSWORD"' in script  # an empty one would run Redis without a password
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["exec"]["command"] == ["sh", "-c", "redis-cli ping | grep -qx PONG"]


@pytest.mark.skipif(shutil.which("redis-server") is None or shutil.which("redis-cli") is None,
                    reason="redis-server is missing")
def test_the_redis_command_refuses_an_empty_password_and_requires_the_one_set(tmp_path: Path) -> None:
    """The container's own command and probe, run here against a real redis-server on a free port."""
    import redis

    container = _redis_container()
    script = container["command"][-1]
    empty = subprocess.run(["sh", "-c", script], env={"PATH": "/usr/bin:/bin", "REDIS_PASSWORD": ""},
                           capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert empty.returncode == 1 and "COUNCIL_REDIS_PASSWORD is empty" in empty.stderr
    port, password = free_port(), "0123456789abcdef0123456789abcdef"
    proc = subprocess.Popen(["sh", "-c", f"{script} --port {port} --bind 127.0.0.1"], cwd=tmp_path,
                            env={"PATH": "/usr/bin:/bin", "REDIS_PASSWORD": password},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    probe = container["readinessProbe"]["exec"]["command"][-1].replace("redis-cli", f"redis-cli -p {port}")
    try:
        def probed(auth: str) -> int:
            return subprocess.run(["sh", "-c", probe], env={"PATH": "/usr/bin:/bin", "REDISCLI_AUTH": auth},
                                  timeout=10).returncode

        poll_ready(lambda: probed(password) == 0, proc, 20, lambda code, _: RuntimeError(f"redis exited {code}"),
                   lambda: TimeoutError("redis did not answer"))
        assert probed("wrong") != 0
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(port=port).hset("council:members", "0-attacker", "[]")
        assert redis.Redis(port=port, password=password).ping()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _selects(selector: dict, labels: dict) -> bool:
    return set(selector["matchLabels"].items()) <= set(labels.items())


def test_network_policies_keep_redis_and_the_gpu_hosts_to_council_pods() -> None:
    pods = {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"] for d in by_kind("Deployment")}
    policies = {p["metadata"]["name"]: p["spec"] for p in by_kind("NetworkPolicy")}
    council = {"council-router", "council-gpu-a", "council-gpu-b"}
    allowed = {"council-redis": council, "council-gpu-a": {"council-router"}, "council-gpu-b": {"council-router"}}
    for target, who in allowed.items():
        covering = [p for p in policies.values() if _selects(p["podSelector"], pods[target])]
        assert covering, f"no NetworkPolicy selects {target}"
        for spec in covering:
            assert spec["policyTypes"] == ["Ingress"]
            peers = [peer for rule in spec["ingress"] for peer in rule["from"]]
            # Pods of this namespace only (no namespaceSelector, no ipBlock), and exactly the ones allowed.
            assert peers and all(set(peer) == {"podSelector"} for peer in peers), spec
            reach = {name for name, labels in pods.items() for peer in peers if _selects(peer["podSelector"], labels)}
            assert reach == who, (target, reach)
            assert all(rule["ports"] for rule in spec["ingress"])
    # Every Service but the routers' (agents call it) leads to pods a NetworkPolicy guards.
    for svc in by_kind("Service"):
        if svc["metadata"]["name"] == "council":
            continue
        behind = [name for name, labels in pods.items() if set(svc["spec"]["selector"].items()) <= set(labels.items())]
        assert behind and all(name in allowed for name in behind), svc["metadata"]["name"]


def test_the_servicemonitor_component_lets_prometheus_reach_the_gpu_hosts() -> None:
    (policy,) = docs(K8S / "components/servicemonitor/networkpolicy.yaml")
    pods = {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"] for d in by_kind("Deployment")}
    assert {n for n, labels in pods.items() if _selects(policy["spec"]["podSelector"], labels)} == {
        "council-gpu-a", "council-gpu-b"}
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [{"namespaceSelector": {},
                             "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}]
    listed = yaml.safe_load((K8S / "components/servicemonitor/kustomization.yaml").read_text())["resources"]
    assert "networkpolicy.yaml" in listed
