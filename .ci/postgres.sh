#!/usr/bin/env bash
# A throwaway PostgreSQL server on 127.0.0.1 for the tests (CI and developers).
#
#   eval "$(.ci/postgres.sh start)"   # prints: export AUTOPRUNE_TEST_PG_URL=postgresql+psycopg2://...
#   .ci/postgres.sh stop              # stops it (the data stay for the next start)
#   .ci/postgres.sh url               # prints the URL of the server in the folder
#   .ci/postgres.sh destroy           # stops it and removes the folder
#
# The folder is $AUTOPRUNE_PG_DIR (default /tmp/autoprune-pg). `start` installs PostgreSQL from the
# OS packages if it is missing and we are root; it initialises the folder once (a database and a
# user with a random password), then starts the server on a free loopback port (kept across restarts).
# PostgreSQL refuses to run as root, so as root the server runs as the `postgres` user.
set -euo pipefail

DIR="${AUTOPRUNE_PG_DIR:-/tmp/autoprune-pg}"
DATA="$DIR/data"
LOG="$DIR/server.log"
DB=autoprune_test
ROLE=autoprune

pg_bin() {
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -n "$d" ] && [ -x "$d/initdb" ]; then echo "$d"; return 0; fi
    d=$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/initdb)")
    if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then echo "$d"; return 0; fi
    return 1
}

install_pg() {
    if pg_bin >/dev/null; then return 0; fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "postgres.sh: installing PostgreSQL from the OS packages" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2 || true
        apt-get install -y -qq postgresql >&2
        # the package's own cluster is not used: stop it if the installer started one
        if command -v pg_ctlcluster >/dev/null; then
            for c in /etc/postgresql/*/main; do
                [ -d "$c" ] && pg_ctlcluster "$(basename "$(dirname "$c")")" main stop >&2 2>/dev/null || true
            done
        fi
    fi
    pg_bin >/dev/null || { echo "postgres.sh: PostgreSQL is not installed (initdb not found)" >&2; return 1; }
}

# Run a command as the server's owner: `postgres` when we are root, else ourselves.
as_owner() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

url() {
    [ -f "$DIR/url" ] || { echo "postgres.sh: no server in $DIR (run start)" >&2; return 1; }
    cat "$DIR/url"
}

init_once() {
    local bin="$1"
    [ -f "$DIR/url" ] && return 0
    rm -rf "$DIR"
    mkdir -p "$DIR"
    local port pass
    port=$(free_port)
    pass=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
    [ "$(id -u)" = 0 ] && chown postgres: "$DIR"
    as_owner "$bin/initdb" -D "$DATA" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
        -E UTF8 --no-instructions >"$DIR/initdb.log" 2>&1 \
        || { cat "$DIR/initdb.log" >&2; return 1; }
    echo "$port" >"$DIR/port"
    start_server "$bin"
    psql_owner "$bin" -c "CREATE ROLE $ROLE LOGIN PASSWORD '$pass'" >/dev/null
    psql_owner "$bin" -c "CREATE DATABASE $DB OWNER $ROLE" >/dev/null
    echo "postgresql+psycopg2://$ROLE:$pass@127.0.0.1:$port/$DB" >"$DIR/url"
    chmod 600 "$DIR/url"
}

psql_owner() {
    local bin="$1"; shift
    local psql="$bin/psql"
    [ -x "$psql" ] || psql=psql
    as_owner "$psql" -h "$DIR" -p "$(cat "$DIR/port")" -U postgres -d postgres -v ON_ERROR_STOP=1 -q "$@"
}

start_server() {
    local bin="$1"
    if as_owner "$bin/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then return 0; fi
    as_owner "$bin/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -c port=$(cat "$DIR/port") -k $DIR -c fsync=off" start >/dev/null \
        || { tail -n 20 "$LOG" >&2; return 1; }
}

case "${1:-}" in
    start)
        install_pg
        bin=$(pg_bin)
        init_once "$bin"
        start_server "$bin"
        echo "export AUTOPRUNE_TEST_PG_URL=$(url)"
        ;;
    stop)
        bin=$(pg_bin) || exit 0
        [ -d "$DATA" ] || exit 0
        as_owner "$bin/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null 2>&1 || true
        ;;
    url)
        url
        ;;
    destroy)
        "$0" stop
        rm -rf "$DIR"
        ;;
    *)
        echo "usage: $0 start|stop|url|destroy" >&2
        exit 2
        ;;
esac
