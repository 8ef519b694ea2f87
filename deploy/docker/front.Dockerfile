# The compose stack's front: HAProxy from Debian's package on the same base (no registry needed), as the
# unprivileged `haproxy` user on port 8080. Anywhere a registry is reachable, `image: haproxy:2.6` does the same job.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends haproxy \
 && rm -rf /var/lib/apt/lists/*
USER haproxy
EXPOSE 8080
# -W: master-worker (reloads with SIGUSR2), -db: stay in the foreground, logs on stdout.
CMD ["haproxy", "-W", "-db", "-f", "/etc/haproxy/haproxy.cfg"]
