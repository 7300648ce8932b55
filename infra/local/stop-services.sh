#!/usr/bin/env bash
# Stop the processes infra/local/start-services.sh started from STATE_DIR (default
# /tmp/udl-services-$USER). The database, logs and credentials stay in STATE_DIR, so the next
# start resumes; delete STATE_DIR to start from scratch.
set -euo pipefail

state=${1:-${UDL_STATE_DIR:-/tmp/udl-services-$(id -un)}}
pg_os_user=${UDL_PG_OS_USER:-udl-postgres}
[ -d "$state" ] || { echo "stop-services: no state folder $state" >&2; exit 1; }

# Each service leads its own process group (start-services.sh runs it under setsid): signal
# the group so the dask nannies' workers and the worker's flow-run subprocesses stop too.
# All get SIGTERM, are waited for together (up to 30 s), and whatever is left gets SIGKILL.
groups=()
for name in prefect-worker dask-worker-1 dask-worker-2 dask-scheduler prefect-server; do
    pidfile="$state/pids/$name.pid"
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    # A pid that no longer leads its group was recycled for some other program: leave it.
    if [ "$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ')" = "$pid" ]; then
        kill -TERM -- "-$pid" 2>/dev/null && groups+=("$pid") && echo "stopping $name"
    fi
    rm -f "$pidfile"
done
for _ in $(seq 150); do
    alive=()
    for pid in "${groups[@]}"; do
        if kill -0 -- "-$pid" 2>/dev/null; then alive+=("$pid"); fi
    done
    [ ${#alive[@]} -eq 0 ] && break
    sleep 0.2
done
for pid in "${groups[@]}"; do
    kill -KILL -- "-$pid" 2>/dev/null || true
done

if [ -f "$state/pgdata/postmaster.pid" ]; then
    initdb=$(command -v initdb || ls -d /usr/lib/postgresql/*/bin/initdb | tail -n 1)
    pg_ctl=$(dirname "$(readlink -f "$initdb")")/pg_ctl
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u "$pg_os_user" -- "$pg_ctl" -D "$state/pgdata" -m fast -w stop >/dev/null
    else
        "$pg_ctl" -D "$state/pgdata" -m fast -w stop >/dev/null
    fi
    echo "stopped postgres"
fi
