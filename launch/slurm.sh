#!/usr/bin/env bash
# Submits a symtune command to SLURM on GPU nodes (one process per GPU by default).
#
#   launch/slurm.sh --nodes=N [--gpus_per_node=8] [--per=gpu|node] [--partition=P] [--time=HH:MM:SS]
#                   [--account=A] [--dry-run] -- train --gin_file=... --run_dir=/shared/runs/x
#
# Install the repository (make install PYTHON=python3.11, plus jax[cuda12]) on a filesystem all nodes
# share and submit from its root (or set SYMTUNE_REPO to it); this checks that its .venv has Python
# 3.11+ before submitting. Each task logs to slurm-logs/<job id>/task-<n>.out there. --dry-run
# prints the sbatch command instead of submitting it.
set -euo pipefail

usage="usage: launch/slurm.sh --nodes=N [--gpus_per_node=8] [--per=gpu|node] [--partition=P]\
 [--time=HH:MM:SS] [--account=A] [--dry-run] -- SYMTUNE_COMMAND [ARGS...]"
die() { echo "slurm.sh: $*" >&2; exit 2; }

nodes="" gpus=8 per="gpu" partition="" time="24:00:00" account="" dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --nodes=*) nodes="${1#*=}" ;;
    --gpus_per_node=*) gpus="${1#*=}" ;;
    --per=*) per="${1#*=}" ;;
    --partition=*) partition="${1#*=}" ;;
    --time=*) time="${1#*=}" ;;
    --account=*) account="${1#*=}" ;;
    --dry-run) dry_run=1 ;;
    -h|--help) echo "$usage"; exit 0 ;;
    --) shift; break ;;
    *) die "unknown option $1 (options before --, the command after); $usage" ;;
  esac
  shift
done
[[ -n "$nodes" ]] || die "missing --nodes=N (how many nodes); $usage"
[[ "$nodes" =~ ^[1-9][0-9]*$ ]] || die "--nodes must be a positive integer, got '$nodes'"
[[ "$gpus" =~ ^[1-9][0-9]*$ ]] || die "--gpus_per_node must be a positive integer, got '$gpus'"
[[ "$per" == gpu || "$per" == node ]] || die "--per must be gpu (one process per GPU) or node, got '$per'"
[[ $# -gt 0 ]] || die "missing the symtune command after -- (e.g. -- train --gin_file=...); $usage"
[[ "$1" != symtune ]] || die "the command after -- is a symtune subcommand: -- ${*:2}, without 'symtune'"
tasks=$([[ "$per" == gpu ]] && echo "$gpus" || echo 1)

# The batch script runs from SYMTUNE_REPO or the submit directory: its .venv must be there, and new
# enough, before the job waits in the queue.
repo="${SYMTUNE_REPO:-$PWD}"
[[ -x "$repo/.venv/bin/symtune" ]] ||
  die "no .venv/bin/symtune in $repo: install there (make install PYTHON=python3.11) or set SYMTUNE_REPO to the install"
version="$("$repo/.venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2]); sys.exit(sys.version_info < (3, 11))' 2>/dev/null)" ||
  die "$repo/.venv/bin/python is ${version:-not runnable}; symtune needs Python 3.11+: remove .venv, then make install PYTHON=python3.11"

# Quotes one word for a POSIX shell only where it needs it (as Python's shlex.quote does).
q() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then printf '%s' "$1"
  else printf "'%s'" "${1//\'/\'\"\'\"\'}"; fi
}
cmd=(sbatch --parsable "--nodes=$nodes" "--ntasks-per-node=$tasks" "--gpus-per-node=$gpus" "--time=$time")
[[ -n "$partition" ]] && cmd+=("--partition=$partition")
[[ -n "$account" ]] && cmd+=("--account=$account")
cmd+=("$(dirname "$0")/slurm_gpu.sbatch" "$@")

if [[ $dry_run -eq 1 ]]; then
  out=""
  for a in "${cmd[@]}"; do out+="$(q "$a") "; done
  echo "${out% }"
else
  job="$("${cmd[@]}")"
  job="${job%%;*}"  # --parsable prints JOBID or JOBID;CLUSTER
  echo "submitted job $job"
  echo "  logs: $PWD/slurm-$job.out (the job), $repo/slurm-logs/$job/task-<n>.out (each task)"
  echo "  stop (checkpoints first): scancel --signal=TERM $job; a resubmitted command resumes"
fi
