#!/usr/bin/env bash
# Start a local Docker engine (Debian's dockerd) for CI and development, as described in
# docs/guide/competition.md (Sandboxing with Docker). Idempotent: if the engine under /tmp/dockerd already answers, it does
# nothing but print the DOCKER_HOST line. Needs root (dockerd, apt).
#
#   eval "$(docker/start_engine.sh | grep '^export ')"     # or: export DOCKER_HOST=unix:///tmp/dockerd/docker.sock
#
# The flags --bridge=none --iptables=false --ip-masq=false are required on these machines: without
# them the engine creates a bridge on a private range and rewrites the firewall. Containers run with
# network_mode="none"; image builds that need the network use --network host.
set -euo pipefail

ROOT=${DOCKERD_ROOT:-/tmp/dockerd}
SOCK="unix://$ROOT/docker.sock"
PIDFILE="$ROOT/docker.pid"
export DOCKER_HOST="$SOCK"

answers() { docker info >/dev/null 2>&1; }

if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null && answers; then
  echo "docker engine already running (pid $(cat "$PIDFILE"))" >&2
  echo "export DOCKER_HOST=$SOCK"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "start_engine.sh: must run as root to start dockerd" >&2
  exit 1
fi

missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing ${missing[*]} with apt" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
# Debian's docker.io ships its own client under /usr/bin; an existing newer client earlier on PATH
# is fine (it negotiates the API version down).

mkdir -p "$ROOT"
# A stale pid file from a dead engine: clean up what it left behind before starting again.
if [ -f "$PIDFILE" ] && ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
  rm -f "$PIDFILE"
  umount "$ROOT/exec/netns/default" 2>/dev/null || true
fi
if [ ! -f "$PIDFILE" ]; then
  nohup dockerd --data-root "$ROOT/root" --exec-root "$ROOT/exec" \
    -H "$SOCK" --pidfile "$PIDFILE" \
    --bridge=none --iptables=false --ip-masq=false >"$ROOT/dockerd.log" 2>&1 </dev/null &
fi

for _ in $(seq 1 120); do
  if answers; then
    echo "docker engine ready: $(docker version --format '{{.Server.Version}}' 2>/dev/null) at $SOCK" >&2
    echo "export DOCKER_HOST=$SOCK"
    exit 0
  fi
  sleep 0.5
done
echo "start_engine.sh: dockerd did not answer within 60 s; last lines of $ROOT/dockerd.log:" >&2
tail -n 30 "$ROOT/dockerd.log" >&2 || true
exit 1
