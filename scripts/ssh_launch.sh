#!/usr/bin/env bash
# PolyBeast over plain ssh: env servers on the listed hosts, the learner(s) here.
#
#   scripts/ssh_launch.sh HOST[:PORT] ... -- [learner flags]
#   SERVERS_PER_HOST=16 TLS_ARGS="--tls_cert ... --tls_key ... --tls_ca ..." \
#       scripts/ssh_launch.sh cpu1 cpu2 -- --env memory_maze:MemoryMaze-9x9-ExtraObs-v0 --xpid maze9
#
# Each host runs `python -m torchbeast.polybeast_env --bind 0.0.0.0:PORT --num_servers N` (server i
# on PORT + i; PORT defaults to BASE_PORT) from the same checkout path as here (or REMOTE_DIR), with
# the learner's --env. The learner connects to all of them with --env_servers. When the learner
# ends (finished, Ctrl-C, SIGTERM, failure), the servers are stopped: each remote command waits
# on its stdin, which this script closes, then SIGTERMs its servers. Exit status: the learner's.
#
# Knobs (environment): SERVERS_PER_HOST (8), BASE_PORT (4431), LEARNERS (1; more: torchrun
# --nproc_per_node on this host), PYTHON (python, on both sides; the remote one should be the
# venv's), REMOTE_DIR (this checkout's path), ENV_ARGS (more env server flags), TLS_ARGS (given to
# both sides), SSH (ssh; e.g. "ssh -i key"), STOP_TIMEOUT_S (30).
set -uo pipefail

SERVERS_PER_HOST="${SERVERS_PER_HOST:-8}"
BASE_PORT="${BASE_PORT:-4431}"
LEARNERS="${LEARNERS:-1}"
PYTHON="${PYTHON:-python}"
REMOTE_DIR="${REMOTE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}"
ENV_ARGS="${ENV_ARGS:-}"
TLS_ARGS="${TLS_ARGS:-}"
SSH="${SSH:-ssh}"
STOP_TIMEOUT_S="${STOP_TIMEOUT_S:-30}"

usage="usage: scripts/ssh_launch.sh HOST[:PORT] ... -- [learner flags]"
hosts=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do hosts+=("$1"); shift; done
if [ $# -eq 0 ] || [ "${#hosts[@]}" -eq 0 ]; then echo "ssh_launch.sh: error: $usage" >&2; exit 2; fi
shift
learner_args=("$@")

# The env id the servers must serve: the learner's --env (its default when not given).
env_id="memory_maze:MemoryMaze-9x9-ExtraObs-v0"
for ((i = 0; i < ${#learner_args[@]}; i++)); do
  case "${learner_args[i]}" in
    --env) env_id="${learner_args[i + 1]:-}" ;;
    --env=*) env_id="${learner_args[i]#--env=}" ;;
  esac
done

log() { echo "[ssh_launch $(date +%H:%M:%S)] $*" >&2; }

feeders=() sessions=() addresses=()
fifos="$(mktemp -d "${TMPDIR:-/tmp}/ssh_launch.XXXXXX")"
stop_servers() {
  trap '' INT TERM  # a second Ctrl-C must not cut the stopping short
  log "stopping the env servers on ${hosts[*]}"
  kill "${feeders[@]}" 2>/dev/null  # closes each remote command's stdin: it SIGTERMs its servers
  local deadline=$((SECONDS + STOP_TIMEOUT_S)) pid
  for pid in "${sessions[@]}"; do
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
      log "ssh session $pid did not end within ${STOP_TIMEOUT_S} s; killing it"
      kill -9 "$pid"
    fi
  done
  rm -rf "$fifos"
}

trap stop_servers EXIT
for entry in "${hosts[@]}"; do
  host="${entry%%:*}" port="${BASE_PORT}"
  [ "$entry" != "$host" ] && port="${entry#*:}"
  case "$port" in ''|*[!0-9]*) echo "ssh_launch.sh: error: host $entry: expected HOST or HOST:PORT" >&2; exit 2 ;; esac
  for ((i = 0; i < SERVERS_PER_HOST; i++)); do addresses+=("${host}:$((port + i))"); done
  # The remote side: serve in the background, stop on EOF of stdin (the launcher closed it, or died).
  remote="cd '${REMOTE_DIR}' && { ${PYTHON} -m torchbeast.polybeast_env --env '${env_id}' --bind 0.0.0.0:${port} \
--num_servers ${SERVERS_PER_HOST} ${ENV_ARGS} ${TLS_ARGS} & server=\$!; cat >/dev/null; kill -TERM \$server; wait \$server; }"
  # The session's stdin is a fifo that only `sleep` writes to: killing the sleep closes it.
  fifo="${fifos}/${#sessions[@]}"
  mkfifo "$fifo"
  sleep infinity >"$fifo" &
  feeders+=($!)
  # shellcheck disable=SC2086  # SSH may carry options
  $SSH -o BatchMode=yes "$host" "$remote" <"$fifo" &
  sessions+=($!)
  log "env servers on ${host}: ${SERVERS_PER_HOST} from port ${port} (ssh pid ${sessions[-1]})"
done

if [ "$LEARNERS" -gt 1 ]; then
  launcher=("$PYTHON" -m torch.distributed.run --nnodes 1 --nproc_per_node "$LEARNERS")
else
  launcher=("$PYTHON")
fi
# Ctrl-C or a kill of this script: SIGTERM to the learner (a background job may ignore SIGINT),
# which saves and exits with 143; then the servers are stopped.
# shellcheck disable=SC2086
"${launcher[@]}" -m torchbeast.polybeast_learner --env_servers "${addresses[@]}" ${TLS_ARGS} "${learner_args[@]}" &
learner=$!
trap 'kill -TERM $learner 2>/dev/null' TERM INT
status=0
wait "$learner" || status=$?
while kill -0 "$learner" 2>/dev/null; do wait "$learner" || status=$?; done
exit "$status"
