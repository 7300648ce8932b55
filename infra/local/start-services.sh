#!/usr/bin/env bash
# Start udl's service stack as plain processes on 127.0.0.1, no containers: the same programs
# as infra/docker-compose.yml.
#
#   Postgres        database of the Prefect server (initdb on first start)
#   prefect-server  API + UI, basic auth, analytics off
#   prefect-worker  polls the `udl-process` work pool and runs flow runs as subprocesses
#   dask-scheduler  + dask-worker-1, dask-worker-2: the cluster runtime.dask_address points at
#
# It also creates the work pool and registers the deployments of prefect.yaml.
#
# Usage: infra/local/start-services.sh [STATE_DIR]       (default: /tmp/udl-services-$USER)
#        source STATE_DIR/env                            (points the prefect CLI at this server)
#        infra/local/stop-services.sh [STATE_DIR]
#
# STATE_DIR keeps the database, logs (STATE_DIR/logs), pid files and the generated
# credentials, so starting again on the same STATE_DIR keeps deployments, schedules and run
# history. Settings (environment variables, all optional):
#   UDL_PROJECT_DIR        checkout the flows run in (default: this script's repository)
#   UDL_VENV               virtualenv with udl installed (default: $UDL_PROJECT_DIR/.venv)
#   UDL_PREFECT_PORT       API/UI port (default 4200)
#   UDL_DASK_PORT          Dask scheduler port (default 8786)
#   UDL_PG_PORT            Postgres port (default 5433, next to a system Postgres on 5432)
#   UDL_AUTH_STRING        "user:password" for the API and UI (default: generated once)
#   UDL_DASK_MEMORY_LIMIT  memory limit per Dask worker (default 2GiB)
#   UDL_PG_OS_USER         OS user Postgres runs as when this script runs as root
#                          (Postgres refuses root; default udl-postgres, created if missing)
# Any PREFECT_* variable set here (e.g. PREFECT_WORKER_QUERY_SECONDS) reaches the processes.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export UDL_PROJECT_DIR=${UDL_PROJECT_DIR:-$(cd "$here/../.." && pwd)}
venv_bin=${UDL_VENV:-$UDL_PROJECT_DIR/.venv}/bin
state=${1:-${UDL_STATE_DIR:-/tmp/udl-services-$(id -un)}}
prefect_port=${UDL_PREFECT_PORT:-4200}
dask_port=${UDL_DASK_PORT:-8786}
pg_port=${UDL_PG_PORT:-5433}
pg_os_user=${UDL_PG_OS_USER:-udl-postgres}

die() { echo "start-services: $*" >&2; exit 1; }

[ -x "$venv_bin/prefect" ] || die "no prefect in $venv_bin; run 'make install' or set UDL_VENV"
"$venv_bin/python" -c "" 2>/dev/null || die "$venv_bin/python does not run as $(id -un)"
command -v curl >/dev/null || die "curl not found (Debian: apt-get install curl)"
[ -f "$UDL_PROJECT_DIR/prefect.yaml" ] || die "no prefect.yaml in $UDL_PROJECT_DIR"
# Debian keeps the server binaries off PATH, under /usr/lib/postgresql/<version>/bin.
initdb=$(command -v initdb || ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | tail -n 1 || true)
[ -n "$initdb" ] || die "Postgres not found; install it (Debian: apt-get install postgresql)"
pg_bin=$(dirname "$(readlink -f "$initdb")")

mkdir -p "$state"/{logs,pids,dask}
state=$(cd "$state" && pwd)

# Postgres runs as an unprivileged user; as root that is $pg_os_user, who must be able to
# reach STATE_DIR (hence o+x on it; the secrets inside stay 0600).
if [ "$(id -u)" -eq 0 ]; then
    id "$pg_os_user" >/dev/null 2>&1 ||
        useradd --system --no-create-home --shell /usr/sbin/nologin "$pg_os_user"
    as_pg() { runuser -u "$pg_os_user" -- "$@"; }
    chmod o+x "$state"
    as_pg test -x "$state" ||
        die "user $pg_os_user cannot enter $state; choose a STATE_DIR under a world-traversable folder"
else
    as_pg() { "$@"; }
fi

for name in prefect-server prefect-worker dask-scheduler dask-worker-1 dask-worker-2; do
    pidfile="$state/pids/$name.pid"
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        die "$name is already running from $state; run infra/local/stop-services.sh $state first"
    fi
done
for port in "$prefect_port" "$dask_port" "$pg_port"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        die "port $port on 127.0.0.1 is taken; set UDL_PREFECT_PORT / UDL_DASK_PORT / UDL_PG_PORT"
    fi
done

# Credentials are generated once per STATE_DIR and never printed.
secrets="$state/secrets"
if [ ! -f "$secrets" ]; then
    token() { "$venv_bin/python" -c "import secrets; print(secrets.token_urlsafe(18))"; }
    (
        umask 077
        printf 'PG_SUPERUSER_PASSWORD=%q\nPG_PREFECT_PASSWORD=%q\nAUTH_STRING=%q\n' \
            "$(token)" "$(token)" "${UDL_AUTH_STRING:-admin:$(token)}" >"$secrets"
    )
fi
# shellcheck source=/dev/null
. "$secrets"

# On any failure below, stop whatever already started so nothing is left running.
started=false
on_exit() {
    if [ "$started" != true ]; then
        echo "start-services: failed; logs are in $state/logs" >&2
        "$here/stop-services.sh" "$state" >/dev/null 2>&1 || true
    fi
}
trap on_exit EXIT
own_by_pg() { if [ "$(id -u)" -eq 0 ]; then chown "$pg_os_user" "$@"; fi; }

pgdata="$state/pgdata"
pgrun="$state/pgrun"
if [ ! -f "$pgdata/PG_VERSION" ]; then
    mkdir -p "$pgdata" "$pgrun"
    pwfile="$pgrun/pwfile"
    printf '%s\n' "$PG_SUPERUSER_PASSWORD" >"$pwfile"
    chmod 700 "$pgrun"
    own_by_pg "$pgdata" "$pgrun" "$pwfile"
    # Local (socket) connections are trusted because the socket folder is private to the
    # Postgres user; TCP connections need a password.
    as_pg "$pg_bin/initdb" -D "$pgdata" -U postgres --pwfile="$pwfile" -E UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host=scram-sha-256 >"$state/logs/initdb.log" 2>&1
    rm -f "$pwfile"
fi
touch "$state/logs/postgres.log"
own_by_pg "$state/logs/postgres.log"
as_pg "$pg_bin/pg_ctl" -D "$pgdata" -l "$state/logs/postgres.log" -w -t 60 start \
    -o "-c listen_addresses=127.0.0.1 -c port=$pg_port -c unix_socket_directories=$pgrun" >/dev/null
psql_su() { as_pg "$pg_bin/psql" -h "$pgrun" -p "$pg_port" -U postgres -d postgres -qAt -v ON_ERROR_STOP=1 "$@"; }
if [ -z "$(psql_su -c "SELECT 1 FROM pg_roles WHERE rolname = 'prefect'")" ]; then
    # Secrets go through stdin, never argv (which every local user can read in ps).
    printf "CREATE ROLE prefect LOGIN PASSWORD '%s';\nCREATE DATABASE prefect OWNER prefect;\n" \
        "$PG_PREFECT_PASSWORD" | psql_su
fi

# What every Prefect process (and a user's shell, via STATE_DIR/env) needs.
export PREFECT_HOME="$state/prefect-home"
export PREFECT_API_URL="http://127.0.0.1:$prefect_port/api"
export PREFECT_API_AUTH_STRING="$AUTH_STRING"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export DO_NOT_TRACK=1
export UDL_DASK_ADDRESS="tcp://127.0.0.1:$dask_port"
mkdir -p "$PREFECT_HOME"

# Each service gets its own session (setsid), so stop-services.sh can signal the service
# together with the subprocesses it spawned (uvicorn, dask nannies, flow runs).
launch() {
    local name=$1
    shift
    (cd "$UDL_PROJECT_DIR" && exec setsid "$@" >"$state/logs/$name.log" 2>&1 </dev/null) &
    echo $! >"$state/pids/$name.pid"
}
wait_until() {
    local what=$1 seconds=$2
    shift 2
    for _ in $(seq "$seconds"); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 1
    done
    die "$what not ready after ${seconds}s; see $state/logs"
}
api_get() { printf 'user = "%s"\n' "$AUTH_STRING" | curl -fsS -K - "$PREFECT_API_URL/$1"; }
# The pool turns READY once a worker polls it.
pool_ready() { api_get work_pools/udl-process | grep -q '"status":"READY"'; }

PREFECT_API_DATABASE_CONNECTION_URL="postgresql+asyncpg://prefect:$PG_PREFECT_PASSWORD@127.0.0.1:$pg_port/prefect" \
PREFECT_SERVER_API_HOST=127.0.0.1 \
PREFECT_SERVER_API_PORT="$prefect_port" \
PREFECT_SERVER_API_AUTH_STRING="$AUTH_STRING" \
PREFECT_UI_API_URL="$PREFECT_API_URL" \
    launch prefect-server "$venv_bin/prefect" server start

# Dask starts while the server runs its migrations.
launch dask-scheduler "$venv_bin/dask" scheduler --host 127.0.0.1 --port "$dask_port" --no-dashboard
for i in 1 2; do
    launch "dask-worker-$i" "$venv_bin/dask" worker "$UDL_DASK_ADDRESS" --host 127.0.0.1 \
        --name "worker-$i" --nthreads 1 --memory-limit "${UDL_DASK_MEMORY_LIMIT:-2GiB}" \
        --no-dashboard --local-directory "$state/dask"
done

wait_until "Prefect server" 120 curl -fsS "http://127.0.0.1:$prefect_port/api/health"
prefect() { (cd "$UDL_PROJECT_DIR" && "$venv_bin/prefect" "$@"); }
prefect work-pool inspect udl-process >/dev/null 2>&1 ||
    prefect work-pool create udl-process --type process >"$state/logs/work-pool.log" 2>&1
prefect --no-prompt deploy --all >"$state/logs/deploy.log" 2>&1
launch prefect-worker "$venv_bin/prefect" worker start --pool udl-process

wait_until "Dask cluster" 60 "$venv_bin/python" -c \
    "from distributed import Client; Client('$UDL_DASK_ADDRESS', timeout=5).wait_for_workers(2, timeout=5)"
wait_until "Prefect worker" 60 pool_ready

(
    umask 077
    for name in PREFECT_HOME PREFECT_API_URL PREFECT_API_AUTH_STRING PREFECT_SERVER_ANALYTICS_ENABLED \
        DO_NOT_TRACK UDL_PROJECT_DIR UDL_DASK_ADDRESS; do
        printf 'export %s=%q\n' "$name" "${!name}"
    done >"$state/env"
)
started=true
echo "udl services are up (state: $state)"
echo "  Prefect UI/API  http://127.0.0.1:$prefect_port  (auth string: see $state/env)"
echo "  Dask scheduler  $UDL_DASK_ADDRESS"
echo "  use them:       source $state/env"
