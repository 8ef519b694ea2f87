#!/usr/bin/env bash
# The compose stack for real, on a CPU: build the images, start Redis + two `--role host` services + two
# `--role router` behind the HAProxy front, ask the council through the front with the OpenAI SDK, kill one
# host and see the answer flagged degraded, kill one router and see the front still answer, then take
# everything down (containers, network, volumes).
#
#   deploy/docker/smoke.sh          (as root where tools are missing: it apt-installs docker.io,
#                                     docker-compose and debootstrap, and starts dockerd when none answers)
#
# Environment: COUNCIL_MODELS_DIR (default ~/.cache/council/models, must hold SmolLM2-135M-Instruct.Q4_1.gguf,
# `council setup` puts it there), COUNCIL_CA_BUNDLE (default the system trust store, when present: a build
# secret for pip behind a TLS-intercepting proxy; set it empty to build without), PYTHON (with the openai
# package; default the repository's .venv), COUNCIL_SMOKE_KEEP=1 (leave the stack up for a look).
# Caches: Docker's layer cache (llama-server is built once), the debootstrap tarball in
# ~/.cache/council/docker/.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${COUNCIL_DOCKER_CACHE:-$HOME/.cache/council/docker}
models=${COUNCIL_MODELS_DIR:-$HOME/.cache/council/models}
model_file=SmolLM2-135M-Instruct.Q4_1.gguf
start=$(date +%s)
mkdir -p "$cache"

say() { printf '\033[1m==> [%3ss] %s\033[0m\n' "$(( $(date +%s) - start ))" "$*"; }
die() { echo "smoke.sh: error: $*" >&2; exit 1; }

need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v docker-compose >/dev/null || need+=(docker-compose)
command -v debootstrap >/dev/null || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || die "please install ${need[*]} (apt-get install ${need[*]})"
  say "apt-get install ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# A BuildKit-capable client: one with buildx, else Debian's docker.io client (BuildKit built in).
docker=${DOCKER:-docker}
if ! $docker buildx version >/dev/null 2>&1 && [ -x /usr/bin/docker ]; then docker=/usr/bin/docker; fi
export DOCKER_BUILDKIT=1

if ! $docker info >/dev/null 2>&1; then
  say "starting dockerd (log: $cache/dockerd.log)"
  command -v dockerd >/dev/null || die "no dockerd"
  setsid dockerd >"$cache/dockerd.log" 2>&1 < /dev/null &
  for _ in $(seq 100); do $docker info >/dev/null 2>&1 && break; sleep 0.3; done
  $docker info >/dev/null 2>&1 || { tail -20 "$cache/dockerd.log" >&2; die "dockerd did not start"; }
fi

[ -s "$models/$model_file" ] || die "$models/$model_file is missing: run \`council setup\` (or set COUNCIL_MODELS_DIR)"

say "base image debian:bookworm-slim"
DOCKER=$docker "$here/base-image.sh"

ca=${COUNCIL_CA_BUNDLE-/etc/ssl/certs/ca-certificates.crt}
secret=()
[ -n "$ca" ] && [ -s "$ca" ] && secret=(--secret "id=ca_bundle,src=$ca")
say "docker build council:local ${secret[*]}"
$docker build -q -f "$here/Dockerfile" -t council:local "${secret[@]}" "$repo" >"$cache/build.log" 2>&1 \
  || { $docker build --progress=plain -f "$here/Dockerfile" -t council:local "${secret[@]}" "$repo" 2>&1 | tail -40; \
       die "the image did not build"; }
say "docker build council-redis:local"
$docker build -q -f "$here/redis.Dockerfile" -t council-redis:local "$here" >>"$cache/build.log" 2>&1 \
  || die "the redis image did not build (see $cache/build.log)"
say "docker build council-front:local"
$docker build -q -f "$here/front.Dockerfile" -t council-front:local "$here" >>"$cache/build.log" 2>&1 \
  || die "the front image did not build (see $cache/build.log)"

project=council-smoke-$$
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export COUNCIL_CLUSTER_KEY COUNCIL_API_KEY COUNCIL_ADMIN_KEY COUNCIL_REDIS_PASSWORD COUNCIL_MODELS_DIR=$models \
  COUNCIL_PORT=$port \
  COUNCIL_BIND=127.0.0.1
COUNCIL_CLUSTER_KEY=$(python3 -c 'import secrets; print(secrets.token_hex(24))')
COUNCIL_API_KEY=$(python3 -c 'import secrets; print(secrets.token_hex(24))')
COUNCIL_ADMIN_KEY=$(python3 -c 'import secrets; print(secrets.token_hex(24))')
COUNCIL_REDIS_PASSWORD=$(python3 -c 'import secrets; print(secrets.token_hex(24))')
compose=(docker-compose -p "$project" -f "$here/compose.yaml")
export DOCKER_HOST=${DOCKER_HOST:-unix:///var/run/docker.sock}

down() {
  local rc=$?
  if [ "${COUNCIL_SMOKE_KEEP:-}" = 1 ]; then echo "left up: ${compose[*]} down -v"; exit $rc; fi
  [ $rc = 0 ] || { "${compose[@]}" ps || true; "${compose[@]}" logs --no-color --tail=40 || true; }
  say "docker-compose down -v"
  "${compose[@]}" down -v --remove-orphans --timeout 20 >/dev/null 2>&1 || true
  local left
  left=$($docker ps -aq --filter "label=com.docker.compose.project=$project"; \
         $docker network ls -q --filter "label=com.docker.compose.project=$project"; \
         $docker volume ls -q --filter "label=com.docker.compose.project=$project")
  if [ -n "$left" ]; then echo "smoke.sh: error: left behind: $left" >&2; rc=1; fi
  say "done (exit $rc)"
  exit $rc
}
trap down EXIT

say "docker-compose up (project $project, front on 127.0.0.1:$port)"
"${compose[@]}" up -d --no-build

py=${PYTHON:-$repo/.venv/bin/python}
[ -x "$py" ] || py=python3
"$py" - "http://127.0.0.1:$port" "$project" "$docker" <<'PY'
"""Ask council `duo` through the front with the OpenAI SDK: both members answer; kill host-b: the answer is
degraded; kill router-1: router-2 answers."""
import subprocess
import sys
import time

import httpx
import openai

url, project, docker = sys.argv[1:4]
key = __import__("os").environ["COUNCIL_API_KEY"]
t0 = time.monotonic()


def until(check, what, timeout):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (httpx.HTTPError, openai.APIError) as exc:
            last = exc
        time.sleep(0.5)
    sys.exit(f"timed out after {timeout}s waiting for {what} (last error: {last})")


until(lambda: httpx.get(f"{url}/readyz", timeout=3).status_code == 200, "a router's /readyz (through the front)",
      300)
print(f"router ready after {time.monotonic() - t0:.1f}s", flush=True)
client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, timeout=60, max_retries=0)


def ask():
    reply = client.chat.completions.create(model="duo", messages=[{"role": "user", "content": "Say hello."}])
    return reply, reply.model_extra["council"]


def both_answer():
    reply, doc = ask()
    statuses = {m["name"]: m["status"] for m in doc["members"]}
    return (reply, doc) if statuses == {"a": "ok", "b": "ok"} and not doc["degraded"] else None


reply, doc = until(both_answer, "both hosts' members to answer", 120)
print(f"council answer (both hosts): {reply.choices[0].message.content!r}, agreement {doc['agreement']}", flush=True)


def container(service):
    found = subprocess.run([docker, "ps", "-q", "--filter", f"label=com.docker.compose.project={project}",
                            "--filter", f"label=com.docker.compose.service={service}"],
                           capture_output=True, text=True, check=True).stdout.split()
    assert len(found) == 1, found
    return found[0]


# The hosts and routers above reached Redis with the password; a client without it is refused.
anonymous = subprocess.run([docker, "exec", container("redis"), "env", "-u", "REDISCLI_AUTH", "redis-cli", "ping"],
                           capture_output=True, text=True, check=True).stdout
assert "NOAUTH" in anonymous, anonymous
print(f"redis without the password: {anonymous.strip()!r}", flush=True)


def kill(service):
    subprocess.run([docker, "kill", container(service)], check=True, capture_output=True)
    print(f"killed {service}", flush=True)


kill("host-b")


def degraded():
    reply, doc = ask()
    statuses = {m["name"]: m["status"] for m in doc["members"]}
    return (reply, doc, statuses) if doc["degraded"] and statuses["a"] == "ok" and statuses["b"] != "ok" else None


reply, doc, statuses = until(degraded, "a degraded answer without host-b", 60)
print(f"council answer (host-b dead): {reply.choices[0].message.content!r}, degraded {doc['degraded']}, "
      f"members {statuses}", flush=True)
# The router's own view after the host's heartbeat lapsed: still ready (quorum 1), degraded answers.
assert httpx.get(f"{url}/readyz", timeout=3).status_code == 200
kill("router-1")
reply, doc, statuses = until(degraded, "the front to answer through router-2", 60)
print(f"council answer (router-1 dead): {reply.choices[0].message.content!r}", flush=True)
print(f"smoke ok in {time.monotonic() - t0:.1f}s after compose up", flush=True)
PY
