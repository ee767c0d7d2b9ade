#!/usr/bin/env bash
# Starts Debian's dockerd in the background when no Docker Engine answers on /var/run/docker.sock
# (tests of the docker executor and of the docker CLI against shoal need one). Prints where it logs.
set -euo pipefail
if docker version >/dev/null 2>&1; then
  exit 0
fi
if ! command -v dockerd >/dev/null 2>&1; then
  echo "dockerd is not installed (apt-get install docker.io); tests that need a Docker Engine will be skipped" >&2
  exit 0
fi
log=/tmp/shoal-dockerd.log
nohup dockerd >"$log" 2>&1 &
for _ in $(seq 1 100); do
  if docker version >/dev/null 2>&1; then
    echo "started dockerd (log $log)"
    exit 0
  fi
  sleep 0.2
done
echo "dockerd did not start; see $log" >&2
tail -5 "$log" >&2 || true
exit 0
