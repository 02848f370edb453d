# Services the test suite needs, started and stopped by ./dev test.
# Sourced by ./dev; defines start_services and stop_services.
#
# PostgreSQL: the scale-out tests (tests/test_scaleout.py, marker "postgres") run the pipeline
# against a real PostgreSQL registry.  start_services makes a throw-away cluster in a temporary
# directory under the clone, starts it on 127.0.0.1 on a free port (TCP only), creates a
# database with the btree_gist extension daf_butler requires, and exports
#
#     RBNET_TEST_POSTGRES_URL=postgresql://USER@127.0.0.1:PORT/DB
#
# stop_services stops the server and removes the directory.  Both are idempotent, print what
# they do to stderr, and never fail the caller: when no server can be had, the variable is left
# unset, RBNET_TEST_POSTGRES_SKIP says why, and the postgres tests skip with that reason.
#
# Server binaries: /usr/lib/postgresql/*/bin (Debian), then initdb/pg_ctl on PATH.  When none
# are found and we run as root with apt-get, the Debian "postgresql" package is installed
# (without its default cluster).  PostgreSQL refuses to run as root, so as root the cluster
# belongs to the "postgres" system user (or "nobody").

_rbnet_pg_log() { echo "services: $*" >&2; }

_rbnet_pg_bindir() {
    # The newest server installation: a directory holding initdb, pg_ctl and postgres.
    local d best=""
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V); do
        [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/postgres" ] && best="$d"
    done
    if [ -z "$best" ] && command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        best="$(dirname "$(readlink -f "$(command -v initdb)")")"
    fi
    [ -n "$best" ] && echo "$best"
}

_rbnet_pg_install() {
    # Install the Debian server package quietly; only as root and only with apt-get.
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        return 1
    fi
    _rbnet_pg_log "installing the PostgreSQL server with apt-get (quiet; a minute)"
    # Keep the package from creating and starting its own default cluster: we make our own.
    mkdir -p /etc/postgresql-common/createcluster.d
    echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/rbnet-no-main.conf
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql \
        >/dev/null 2>&1
}

_rbnet_pg_free_port() {
    # A port nothing listens on now (the server start is retried if we lose a race).
    local py p
    for py in python3 python; do
        if command -v "$py" >/dev/null 2>&1; then
            "$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' \
                2>/dev/null && return 0
        fi
    done
    for _ in $(seq 50); do
        p=$(( 20000 + RANDOM % 20000 ))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return 0; fi
    done
    return 1
}

_rbnet_pg_run() {
    # Run a server command as the cluster's owner ($runas of the caller; empty: ourselves).
    if [ -n "${runas:-}" ]; then runuser -u "$runas" -- "$@"; else "$@"; fi
}

_rbnet_pg_start() {
    # Prints "URL DIR" on success; returns non-zero with a reason on stderr otherwise.
    local root="$1" bindir runas="" dir port url opts user=rbnet db=rbnet_test i
    bindir="$(_rbnet_pg_bindir)"
    if [ -z "$bindir" ]; then
        if _rbnet_pg_install; then bindir="$(_rbnet_pg_bindir)"; fi
    fi
    if [ -z "$bindir" ]; then
        echo "no PostgreSQL server binaries (initdb, pg_ctl) found, and they cannot be installed here"
        return 1
    fi
    if [ "$(id -u)" = 0 ]; then
        if id postgres >/dev/null 2>&1; then runas=postgres
        elif id nobody >/dev/null 2>&1; then runas=nobody
        else echo "running as root and no unprivileged user (postgres, nobody) to run the server"; return 1
        fi
    fi
    # The server user must be able to reach the directory (a clone under /root is not): fall back
    # to the system temporary directory when the clone does not allow it.
    dir="$(mktemp -d "$root/.ci/pg.XXXXXX" 2>/dev/null)" || dir=""
    if [ -n "$dir" ] && [ -n "$runas" ] && \
        ! { chown "$runas" "$dir" && runuser -u "$runas" -- test -w "$dir"; }; then
        rm -rf "$dir"; dir=""
    fi
    if [ -z "$dir" ]; then
        dir="$(mktemp -d "${TMPDIR:-/tmp}/rbnet-pg.XXXXXX")" || { echo "cannot make a temporary directory"; return 1; }
    fi
    [ -n "$runas" ] && chown "$runas" "$dir"
    _rbnet_pg_log "initdb ($bindir, as ${runas:-$(id -un)}) in $dir"
    if ! _rbnet_pg_run "$bindir/initdb" -D "$dir/data" -U "$user" --auth=trust -E UTF8 --locale=C \
            --no-sync --no-instructions >"$dir/initdb.log" 2>&1; then
        echo "initdb failed: $(tail -3 "$dir/initdb.log" | tr '\n' ' ')"
        rm -rf "$dir"; return 1
    fi
    # TCP on loopback only, no unix socket (its path length is limited and some file systems
    # refuse sockets).  Durability off: a throw-away test cluster, speed matters more.
    opts="-c listen_addresses=127.0.0.1 -c unix_socket_directories= -c fsync=off"
    opts="$opts -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
    for i in 1 2 3; do
        port="$(_rbnet_pg_free_port)" || { echo "no free port"; rm -rf "$dir"; return 1; }
        if _rbnet_pg_run "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 -s \
                -o "$opts -p $port" \
                start >/dev/null 2>&1; then
            break
        fi
        port=""
    done
    if [ -z "$port" ]; then
        echo "the server did not start: $(tail -3 "$dir/server.log" 2>/dev/null | tr '\n' ' ')"
        rm -rf "$dir"; return 1
    fi
    echo "$bindir" > "$dir/bindir"; echo "$runas" > "$dir/runas"
    # btree_gist in template1 too, so databases a test creates later have it.
    if ! { _rbnet_pg_run "$bindir/psql" -X -q -h 127.0.0.1 -p "$port" -U "$user" -d template1 \
               -c "CREATE EXTENSION IF NOT EXISTS btree_gist" &&
           _rbnet_pg_run "$bindir/createdb" -h 127.0.0.1 -p "$port" -U "$user" "$db"; } >"$dir/setup.log" 2>&1; then
        echo "database set-up failed: $(tail -3 "$dir/setup.log" | tr '\n' ' ')"
        _rbnet_pg_run "$bindir/pg_ctl" -D "$dir/data" -m immediate -w -s stop >/dev/null 2>&1
        rm -rf "$dir"; return 1
    fi
    url="postgresql://$user@127.0.0.1:$port/$db"
    echo "$url $dir"
}

start_services() {
    local root out
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    if [ -n "${RBNET_PG_DIR:-}" ] && [ -d "${RBNET_PG_DIR}/data" ] && [ -n "${RBNET_TEST_POSTGRES_URL:-}" ]; then
        _rbnet_pg_log "PostgreSQL already running: $RBNET_TEST_POSTGRES_URL"
        return 0
    fi
    if [ -n "${RBNET_TEST_POSTGRES_URL:-}" ]; then
        # A server the caller provides (e.g. a CI service container): use it as it is.
        _rbnet_pg_log "using the given RBNET_TEST_POSTGRES_URL=$RBNET_TEST_POSTGRES_URL"
        return 0
    fi
    if out="$(_rbnet_pg_start "$root")"; then
        export RBNET_TEST_POSTGRES_URL="${out%% *}"
        export RBNET_PG_DIR="${out#* }"
        unset RBNET_TEST_POSTGRES_SKIP
        _rbnet_pg_log "PostgreSQL up: RBNET_TEST_POSTGRES_URL=$RBNET_TEST_POSTGRES_URL"
    else
        export RBNET_TEST_POSTGRES_SKIP="${out:-PostgreSQL could not be started}"
        _rbnet_pg_log "no PostgreSQL, the postgres tests will skip: $RBNET_TEST_POSTGRES_SKIP"
    fi
    return 0
}

stop_services() {
    local dir="${RBNET_PG_DIR:-}" bindir runas
    if [ -n "$dir" ] && [ -d "$dir" ]; then
        bindir="$(cat "$dir/bindir" 2>/dev/null)"; runas="$(cat "$dir/runas" 2>/dev/null)"
        if [ -n "$bindir" ] && [ -f "$dir/data/postmaster.pid" ]; then
            _rbnet_pg_log "stopping PostgreSQL in $dir"
            if [ -n "$runas" ]; then
                runuser -u "$runas" -- "$bindir/pg_ctl" -D "$dir/data" -m fast -w -t 30 -s stop >/dev/null 2>&1
            else
                "$bindir/pg_ctl" -D "$dir/data" -m fast -w -t 30 -s stop >/dev/null 2>&1
            fi
        fi
        rm -rf "$dir"
    fi
    unset RBNET_PG_DIR RBNET_TEST_POSTGRES_URL RBNET_TEST_POSTGRES_SKIP
    return 0
}
