#!/usr/bin/env bash
# A local Ray cluster on loopback addresses only (127.0.0.1 is rewritten by Ray to the host's
# network address, so nodes use 127.0.0.2, 127.0.0.3, ...; the dashboard/job API listens on 127.0.0.1).
#
#   infra/local_cluster.sh start [PORT] [DASHBOARD_PORT] [CLIENT_PORT] [AGENT_PORT]   head on 127.0.0.2
#   infra/local_cluster.sh add-node [PORT] [IP] [AGENT_PORT]  a second node (default 127.0.0.3) joining the head
# AGENT_PORT is the dashboard agent's HTTP port (Ray's default 52365): the job API reaches the head
# through it, so give a free one when another Ray may be running on the same loopback address.
#   infra/local_cluster.sh submit [DASHBOARD_PORT] -- CMD  `ray job submit` of CMD with this repo as working dir
#   infra/local_cluster.sh stop                           stops this cluster's processes only
#
# The venv's bin goes first on PATH so job entrypoints (train_elementary, ...) run the project's python.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
venv="${CREFORMER_VENV:-$here/.venv}"
export PATH="$venv/bin:$PATH"
export GLOO_SOCKET_IFNAME="${GLOO_SOCKET_IFNAME:-lo}"
export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}"
export RAY_ENABLE_UV_RUN_RUNTIME_ENV=0
# Ray 2.5x+ clusters require a token; head and clients both read it from ~/.ray/auth_token.
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
[ "$RAY_AUTH_MODE" = token ] && ray get-auth-token --generate >/dev/null
# Ray's own processes stay off the network, and jobs get the caller's proxy settings back: both
# environments come from creformer/ray_utils.py (offline_daemon_env, worker_proxy_env), which says why.
offline_env() {  # KEY=VALUE words for `env` (no value holds a space)
  python -c 'from creformer.ray_utils import offline_daemon_env
print(" ".join(f"{k}={v}" for k, v in offline_daemon_env().items()))'
}
job_env() {  # JSON by python, so a proxy URL with quotes or backslashes stays valid
  python -c 'import json
from creformer.config import RayConfig
from creformer.ray_utils import runtime_env, worker_proxy_env
env = runtime_env(RayConfig())
env["env_vars"].update(worker_proxy_env())
print(json.dumps(env))'
}
cmd="${1:-}"; shift || true
case "$cmd" in
  start)
    port="${1:-6390}"; dash="${2:-8265}"; client="${3:-10001}"; agent="${4:-52365}"
    off="$(offline_env)"  # an assignment, so a failing python stops the script (set -e)
    env $off ray start --head --node-ip-address=127.0.0.2 --port="$port" --dashboard-host=127.0.0.1 \
      --dashboard-port="$dash" --ray-client-server-port="$client" --dashboard-agent-listen-port="$agent" \
      --num-cpus="${RAY_NUM_CPUS:-$(( $(nproc) + 1 ))}" --disable-usage-stats
    # written whole then renamed: a reader polling for the file never sees it empty
    file="${CREFORMER_SESSION_FILE:-/tmp/creformer_ray_session}"
    readlink -f /tmp/ray/session_latest > "$file.tmp.$$" && mv -f "$file.tmp.$$" "$file"
    echo "head at 127.0.0.2:$port; jobs: RAY_API_SERVER_ADDRESS=http://127.0.0.1:$dash"
    ;;
  add-node)
    port="${1:-6390}"; ip="${2:-127.0.0.3}"; agent="${3:-52365}"
    off="$(offline_env)"
    env $off ray start --address="127.0.0.2:$port" --node-ip-address="$ip" --num-cpus="${RAY_NUM_CPUS:-2}" \
      --dashboard-agent-listen-port="$agent" --disable-usage-stats
    ;;
  submit)
    dash="${1:-8265}"; shift || true
    [ "${1:-}" = "--" ] && shift
    log="$(mktemp)"
    # A head that has just started may not have its job agent yet ("No available agent"): retry that only.
    for attempt in 1 2 3 4 5 6 7 8 9 10; do
      set +e
      RAY_API_SERVER_ADDRESS="http://127.0.0.1:$dash" ray job submit --working-dir "$here" \
        --runtime-env-json "$(job_env)" -- "$@" 2>&1 | tee "$log"
      rc=${PIPESTATUS[0]}
      set -e
      if [ "$rc" -ne 0 ] && grep -q "No available agent" "$log"; then
        echo "job agent not ready (attempt $attempt); retrying in 5 s" >&2; sleep 5; continue
      fi
      rm -f "$log"; exit "$rc"
    done
    rm -f "$log"; exit 1
    ;;
  stop)
    # Only this cluster's processes (found by its session folder), so other Ray instances live on.
    file="${CREFORMER_SESSION_FILE:-/tmp/creformer_ray_session}"
    session="$(basename "$(cat "$file" 2>/dev/null)" 2>/dev/null || true)"
    case "$session" in
      session_*)
        # The agents a raylet starts rename themselves (ray::DashboardAgent, ray::RuntimeEnvAgent),
        # so their command lines lack the session folder: take every descendant of the matching
        # processes too, before the raylets die and the agents are re-parented (they then linger,
        # using CPU, until the next `ray stop`).
        pids="$(pgrep -f "/tmp/ray/$session" || true)"
        todo="$pids"
        while [ -n "$todo" ]; do
          kids="$(for p in $todo; do pgrep -P "$p" || true; done)"
          pids="$pids $kids"; todo="$kids"
        done
        [ -n "${pids// /}" ] && kill -TERM $pids 2>/dev/null || true
        for _ in 1 2 3 4 5; do
          alive=""; for p in $pids; do kill -0 "$p" 2>/dev/null && alive="$alive $p"; done
          [ -z "$alive" ] && break; sleep 1
        done
        if [ -n "${alive:-}" ]; then
          kill -KILL $alive 2>/dev/null || true
          # SIGKILL lands asynchronously: wait until they are gone (or zombies) before the GCS
          # check below, which otherwise still saw the head's GCS and kept its record (a flaky
          # test_stop_forgets_the_head on a loaded machine).
          for _ in $(seq 1 100); do
            still=""
            for p in $alive; do
              st="$(ps -o stat= -p "$p" 2>/dev/null || true)"
              [ -n "$st" ] && [ "${st#Z}" = "$st" ] && still="$still $p"
            done
            [ -z "$still" ] && break; sleep 0.1
          done
        fi
        # `ray start` recorded the head as the machine's current cluster; Ray's address
        # auto-detection (the State API, used by Ray Train's placement-group cleaner) would keep
        # trying that dead address, so forget it as `ray stop` does, unless its GCS still runs.
        current=/tmp/ray/ray_current_cluster
        if [ -f "$current" ]; then
          port="$(sed -n '1s/.*://p' "$current")"
          pgrep -f "gcs_server.*--gcs_server_port=$port( |$)" >/dev/null || rm -f "$current"
        fi ;;
      *) echo "no session recorded in $file (was the head started by this script?); nothing stopped" >&2; exit 1 ;;
    esac
    ;;
  *)
    sed -n '2,12p' "$0"; exit 2
    ;;
esac
