#!/usr/bin/env bash
# N local JAX processes with a coordinator on localhost, each with its own simulated CPU devices:
# multi-host behaviour on one machine.
#   launch/local.sh [--processes=2] [--devices=4] -- symtune train --gin_file=runs/tiny_cpu
# Runs with the repository's .venv (make install), or with $PYTHON (3.11+) where that is set.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
version="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2]); sys.exit(sys.version_info < (3, 11))' 2>/dev/null)" || {
  echo "local.sh: $python is ${version:-not runnable}; symtune needs Python 3.11+: run make install, or set PYTHON" >&2
  exit 2
}
exec "$python" -m symtune.train.local_launch "$@"
