#!/usr/bin/env bash
# Runs a symtune (or tart) command on every worker of a Cloud TPU VM slice, detached from this shell.
#
#   launch/tpu_pod.sh --tpu=NAME --zone=ZONE [--project=ID] [--repo=URL] [--ref=BRANCH]
#                     [--data_dir=DIR] [--skip_install] [--dry-run] -- symtune train --gin_file=... --run_dir=gs://...
#   launch/tpu_pod.sh --tpu=NAME --zone=ZONE [--project=ID] [--dry-run] --stop
#
# 1. install (unless --skip_install): on every worker, clone REPO at REF into ~/symtune (REPO
#    defaults to this checkout's `origin` remote), get Python 3.11 with uv (TPU VM images ship an
#    older one) and install the repository with JAX for TPU into ~/symtune/.venv;
# 2. run: on every worker at once, start the command from ~/symtune with the venv's scripts first
#    on PATH, under nohup: it keeps running when this shell or its connection goes away. Each worker
#    appends its output to ~/symtune-logs/<its hostname>.log. JAX finds the pod's other workers
#    itself (symtune.train.distributed, mode auto).
# --stop sends SIGTERM to the run on every worker: it saves a checkpoint and exits, and running the
# same command again resumes it. Put the run directory on a bucket (--run_dir=gs://...): every
# worker writes its checkpoint shards there. --dry-run prints the gcloud commands instead.
set -euo pipefail

usage="usage: launch/tpu_pod.sh --tpu=NAME --zone=ZONE [--project=ID] [--repo=URL] [--ref=BRANCH]\
 [--data_dir=DIR] [--skip_install] [--dry-run] (-- COMMAND [ARGS...] | --stop)"
die() { echo "tpu_pod.sh: $*" >&2; exit 2; }

tpu="" zone="" project="" repo="" ref="main" data_dir=""
install=1 dry_run=0 stop=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tpu=*) tpu="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --repo=*) repo="${1#*=}" ;;
    --ref=*) ref="${1#*=}" ;;
    --data_dir=*) data_dir="${1#*=}" ;;
    --skip_install) install=0 ;;
    --stop) stop=1 ;;
    --dry-run) dry_run=1 ;;
    -h|--help) echo "$usage"; exit 0 ;;
    --) shift; break ;;
    *) die "unknown option $1 (options before --, the command after); $usage" ;;
  esac
  shift
done
[[ -n "$tpu" ]] || die "missing --tpu=NAME (the TPU VM slice); $usage"
[[ -n "$zone" ]] || die "missing --zone=ZONE (the slice's zone); $usage"
if [[ $stop -eq 1 ]]; then
  [[ $# -eq 0 ]] || die "--stop takes no command; it stops the run the last launch started"
else
  [[ $# -gt 0 ]] || die "missing the command after -- (e.g. -- symtune train --gin_file=...), or --stop"
fi
if [[ $stop -eq 0 && $install -eq 1 && -z "$repo" ]]; then
  repo="$(git -C "$(dirname "$0")/.." remote get-url origin 2>/dev/null)" ||
    die "no repository to clone on the workers: pass --repo=URL (this checkout has no origin remote)"
fi

target=(gcloud compute tpus tpu-vm ssh "$tpu" "--zone=$zone")
[[ -n "$project" ]] && target+=("--project=$project")

# Quotes one word for a POSIX shell only where it needs it (as Python's shlex.quote does).
q() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then printf '%s' "$1"
  else printf "'%s'" "${1//\'/\'\"\'\"\'}"; fi
}
quoted() {
  local out="" a
  for a in "$@"; do out+="$(q "$a") "; done
  printf '%s\n' "${out% }"
}

# Joins shell steps into one command line for gcloud's --command.
steps() { local out; printf -v out '%s; ' "$@"; printf '%s' "${out%; }"; }

logs='$HOME/symtune-logs'
# The pid file names the run a worker started; the process must still have ~/symtune as its working
# directory before it counts as that run (a finished run's pid may since belong to something else).
find_run="pid=\$(cat $logs/\$(hostname).pid 2>/dev/null || true); [ -n \"\$pid\" ] && [ \"\$(readlink /proc/\$pid/cwd)\" = \"\$(readlink -f \"\$HOME/symtune\")\" ]"
install_cmd="$(steps "set -e" \
  "if [ -d symtune/.git ]; then git -C symtune fetch -q origin $(q "$ref") && git -C symtune checkout -q FETCH_HEAD; else git clone -q --branch $(q "$ref") $(q "$repo") symtune; fi" \
  "cd symtune" \
  "[ -x \$HOME/.local/bin/uv ] || curl -LsSf https://astral.sh/uv/install.sh | env UV_UNMANAGED_INSTALL=\$HOME/.local/bin sh" \
  ".venv/bin/python -c \"import sys; sys.exit(sys.version_info < (3, 11))\" 2>/dev/null || { rm -rf .venv && \$HOME/.local/bin/uv venv -q --seed --python 3.11 .venv; }" \
  ".venv/bin/pip install -q -c constraints.txt -e . \"jax[tpu]==0.10.2\"" \
  ".venv/bin/pip install -q --no-deps t5==0.9.4")"
start_run="PATH=\$HOME/symtune/.venv/bin:\$PATH"
[[ -n "$data_dir" ]] && start_run+=" SYMTUNE_DATA_DIR=$(q "$data_dir")"
start_run+=" nohup"
for arg in "$@"; do start_run+=" $(q "$arg")"; done
start_run+=" >>$logs/\$(hostname).log 2>&1 </dev/null & echo \$! >$logs/\$(hostname).pid"
run_cmd="$(steps "set -e" "cd symtune" "mkdir -p $logs" \
  "if $find_run; then echo \"\$(hostname): a run is already going (pid \$pid); stop it with launch/tpu_pod.sh --stop\" >&2; exit 1; fi" \
  "$start_run" \
  "echo \"\$(hostname): started, log ~/symtune-logs/\$(hostname).log\"")"
stop_cmd="if $find_run; then kill -TERM \$pid && echo \"\$(hostname): sent SIGTERM to \$pid; it checkpoints and exits\"; else echo \"\$(hostname): no run going\"; fi"

run() {
  if [[ $dry_run -eq 1 ]]; then quoted "$@"; else "$@"; fi
}
if [[ $stop -eq 1 ]]; then
  run "${target[@]}" --worker=all "--command=$stop_cmd"
  exit 0
fi
[[ $install -eq 1 ]] && run "${target[@]}" --worker=all "--command=$install_cmd"
run "${target[@]}" --worker=all "--command=$run_cmd"
if [[ $dry_run -eq 0 ]]; then
  follow=("${target[@]}" --worker=0 '--command=tail -n 100 -f ~/symtune-logs/$(hostname).log')
  stop_it=("$0" "--tpu=$tpu" "--zone=$zone")
  [[ -n "$project" ]] && stop_it+=("--project=$project")
  echo "the run goes on without this shell; each worker logs to ~/symtune-logs/<hostname>.log"
  echo "  follow worker 0: $(quoted "${follow[@]}")"
  echo "  stop (checkpoints first): $(quoted "${stop_it[@]}" --stop)"
fi
