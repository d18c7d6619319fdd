#!/usr/bin/env bash
# Stop the engine started by docker/start_engine.sh: by its pid (never by name), then unmount what
# it leaves behind (docs/guide/competition.md, Sandboxing with Docker). Images stay in /tmp/dockerd/root for the next start.
set -euo pipefail

ROOT=${DOCKERD_ROOT:-/tmp/dockerd}
PIDFILE="$ROOT/docker.pid"

if [ -f "$PIDFILE" ]; then
  pid=$(cat "$PIDFILE")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 60); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
      echo "stop_engine.sh: dockerd (pid $pid) still running after 30 s" >&2
      exit 1
    fi
    echo "docker engine (pid $pid) stopped" >&2
  fi
  rm -f "$PIDFILE"
else
  echo "stop_engine.sh: no engine pid file at $PIDFILE" >&2
fi
if mountpoint -q "$ROOT/exec/netns/default" 2>/dev/null; then
  umount "$ROOT/exec/netns/default"
fi
