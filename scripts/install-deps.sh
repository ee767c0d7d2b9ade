#!/usr/bin/env bash
# Installs what shoal needs on Debian 12 when it is missing: etcd (server and etcdctl), docker.io, busybox-static,
# iproute2, nftables, prometheus, chromium (apt),
# then a virtual environment in .venv with shoal and its Python dependencies (PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
# etcdctl: Debian ships it apart from the server; tests read the store with it.
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
[ -x /bin/busybox ] || need+=(busybox-static)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
# nft: the routing mesh's kernel data path (and its tests).
command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ] || need+=(nftables)
# prometheus: the metrics cluster test scrapes a playground with the real server.
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
# chromium: the dashboard's browser test drives it with playwright (which never downloads a browser here).
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} (apt-get)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# Debian's etcd-server package starts a system etcd on 127.0.0.1:2379; shoal runs its own members.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
  systemctl stop etcd || true
fi
# Debian's prometheus package starts a system server on :9090; the tests run their own.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
  systemctl stop prometheus || true
fi
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q -e '.[test]'
