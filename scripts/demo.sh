#!/usr/bin/env bash
# The demo: installs what is missing, starts a local swarm (1 manager, 2 workers on 127.0.0.2-4),
# deploys a replicated, a global and a published web service, and shows the cluster and the routing mesh. Stop it with: .venv/bin/shoal playground down
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
echo '$ shoal service create --name web --replicas 2 -p 8080:80 busybox sh -c "… exec busybox httpd -f -p \$PORT -h www"'
$shoal service create --name web --replicas 2 -p 8080:80 busybox \
  sh -c 'mkdir -p www && echo "hello from task $SHOAL_TASK_ID" > www/index.html && exec busybox httpd -f -p "$PORT" -h www'
echo
echo '# the routing mesh: port 8080 of every node answers, from both tasks'
for address in 127.0.0.2 127.0.0.3 127.0.0.4 127.0.0.2; do
  printf 'GET http://%s:8080/  →  ' "$address"
  .venv/bin/python - "$address" <<'PY'
import sys, time, urllib.request
for attempt in range(20):  # the tasks may still be starting
    try:
        with urllib.request.urlopen(f"http://{sys.argv[1]}:8080/", timeout=2) as response:
            print(response.read().decode().strip())
            break
    except OSError as exc:
        error = exc
        time.sleep(0.5)
else:
    print(f"no answer: {error}")
PY
done
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
