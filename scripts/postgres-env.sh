# Sourced by scripts/test.sh and scripts/bench.sh: a PostgreSQL database of its own for
# this run. Installs Debian's postgresql when it is missing, starts its cluster when it
# is not running, creates a role and a database, and exports PG_RUN_URL. postgres_down
# drops the database and stops the cluster again if postgres_up started it.
#
# Needs root (apt-get, su postgres).

pg_started=
pg_db=
pg_port=
pg_version=

as_postgres() { (cd / && su postgres -c "$*"); }

postgres_up() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "PostgreSQL is needed: run as root (it is installed and started for you), or set POSTGRES_TEST_URL" >&2
        return 1
    fi
    if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
        echo "installing postgresql" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    fi
    pg_version=$(ls /usr/lib/postgresql | sort -n | tail -1)
    if ! pg_lsclusters -h | awk -v v="$pg_version" '$1 == v && $2 == "main"' | grep -q .; then
        pg_createcluster "$pg_version" main >/dev/null
    fi
    if ! pg_lsclusters -h | awk -v v="$pg_version" '$1 == v && $2 == "main" {print $4}' | grep -q online; then
        pg_ctlcluster "$pg_version" main start
        pg_started=1
    fi
    pg_port=$(pg_lsclusters -h | awk -v v="$pg_version" '$1 == v && $2 == "main" {print $3}')
    pg_db="hongyan_run_$$"
    local password
    password=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
    as_postgres "psql -q -p $pg_port -v ON_ERROR_STOP=1" <<SQL
DO \$\$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'hongyan_run') THEN
        CREATE ROLE hongyan_run LOGIN;
    END IF;
END \$\$;
ALTER ROLE hongyan_run PASSWORD '$password';
CREATE DATABASE $pg_db OWNER hongyan_run;
SQL
    export PG_RUN_URL="postgres://hongyan_run:$password@127.0.0.1:$pg_port/$pg_db"
}

postgres_down() {
    if [ -n "$pg_db" ]; then
        as_postgres "psql -q -p $pg_port -c 'DROP DATABASE IF EXISTS $pg_db WITH (FORCE)'" || true
        pg_db=
    fi
    if [ -n "$pg_started" ]; then
        pg_ctlcluster "$pg_version" main stop || true
        pg_started=
    fi
}
