#!/usr/bin/env bash
# The demo: installs what is missing, starts a local swarm (1 manager, 2 workers on 127.0.0.2-4),
# deploys a replicated and a global service, and shows the cluster. Stop it with: .venv/bin/shoal playground down
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
shoal=.venv/bin/shoal
$shoal playground down >/dev/null 2>&1 || true
$shoal playground up --managers 1 --workers 2
echo
echo '$ shoal service create --name hello --replicas 3 busybox sh -c "while true; do echo hello from \$SHOAL_TASK_SLOT; sleep 1; done"'
$shoal service create --name hello --replicas 3 busybox sh -c 'while true; do echo hello from $SHOAL_TASK_SLOT; sleep 1; done'
echo
echo '$ shoal service create --name monitor --mode global busybox sh -c "while true; do sleep 5; done"'
$shoal service create --name monitor --mode global busybox sh -c 'while true; do sleep 5; done'
echo
echo '$ shoal node ls'; $shoal node ls
echo
echo '$ shoal service ls'; $shoal service ls
echo
echo '$ shoal service ps hello'; $shoal service ps hello
echo
echo '$ shoal service logs --tail 2 hello'; $shoal service logs --tail 2 hello
echo
echo "The swarm keeps running. Try: .venv/bin/shoal service scale hello=6, .venv/bin/shoal node update --availability drain worker1"
echo "Stop it with: .venv/bin/shoal playground down"
