#!/usr/bin/env bash
# The test command: installs what is missing, checks style and types, runs unit then cluster tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/start-dockerd.sh
.venv/bin/ruff check shoal tests bench
.venv/bin/mypy shoal
# Unit tests are pure and fast; cluster tests start real daemons and etcd on loopback addresses, two at a time.
.venv/bin/python -m pytest tests/unit -q -p no:cacheprovider
.venv/bin/python -m pytest tests/cluster -q -p no:cacheprovider -n 2 --dist loadfile
