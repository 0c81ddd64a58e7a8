#!/usr/bin/env bash
# Installs (when missing) and starts the local services the service and its tests need:
# PostgreSQL 15 with pgvector, and Redis 7 — both on loopback only. Creates the application
# role and the application and test databases. Idempotent: on a machine where everything
# already runs it only adds what is missing.
#
# Environment (all optional):
#   PG_MAJOR     PostgreSQL major version            (15)
#   PG_PORT      PostgreSQL port                     (5432)
#   REDIS_PORT   Redis port                          (6379)
#   DB_USER / DB_PASSWORD   application role         (vector / vector)
#   DB_NAME / DB_TEST_NAME  databases                (vector / vector_test)
#   DB_TEMPLATE_NAME        template with pgvector that tests clone fresh databases from
#                                                    (vector_template)
set -euo pipefail

PG_MAJOR=${PG_MAJOR:-15}
PG_PORT=${PG_PORT:-5432}
REDIS_PORT=${REDIS_PORT:-6379}
DB_USER=${DB_USER:-vector}
DB_PASSWORD=${DB_PASSWORD:-vector}
DB_NAME=${DB_NAME:-vector}
DB_TEST_NAME=${DB_TEST_NAME:-vector_test}
DB_TEMPLATE_NAME=${DB_TEMPLATE_NAME:-vector_template}
PG_BIN=/usr/lib/postgresql/$PG_MAJOR/bin

log() { printf '[services] %s\n' "$*" >&2; }

if [ "$(id -u)" -eq 0 ]; then SUDO=(); else SUDO=(sudo); fi
as_root() { "${SUDO[@]}" "$@"; }
# Superuser statements go through the local socket as the postgres OS user (peer or trust auth).
as_postgres() { if [ "$(id -un)" = postgres ]; then "$@"; else as_root runuser -u postgres -- "$@"; fi; }
psql_super() { as_postgres env PGOPTIONS='-c client_min_messages=warning' psql -X -q -v ON_ERROR_STOP=1 -p "$PG_PORT" "$@"; }

apt_updated=0
apt_install() {
  if [ "$apt_updated" -eq 0 ]; then
    as_root apt-get update -qq
    apt_updated=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

missing_packages() {
  local pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || echo "$pkg"
  done
}

# --- packages ---------------------------------------------------------------------------
mapfile -t need < <(missing_packages "postgresql-$PG_MAJOR" "postgresql-client-$PG_MAJOR" redis-server)
if [ "${#need[@]}" -gt 0 ]; then
  log "installing ${need[*]}"
  apt_install "${need[@]}"
fi

# --- promtool ---------------------------------------------------------------------------
# The observability tests lint metrics and unit-test the alert rules with promtool. Only that
# binary is taken from Debian's prometheus package (unpacked, not installed), so no Prometheus
# server, user or service ever appears on the machine.
if ! command -v promtool >/dev/null 2>&1; then
  log "installing promtool from Debian's prometheus package"
  if [ "$apt_updated" -eq 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
  promtool_work=$(mktemp -d)
  (cd "$promtool_work" && apt-get download -qq prometheus >/dev/null 2>&1 ||
    as_root apt-get -o APT::Sandbox::User=root download -qq prometheus >/dev/null)
  dpkg-deb -x "$promtool_work"/prometheus_*.deb "$promtool_work/root"
  as_root install -m 0755 "$promtool_work/root/usr/bin/promtool" /usr/local/bin/promtool
  rm -rf "$promtool_work"
  log "$(promtool --version 2>&1 | head -n1)"
fi

# --- pgvector ---------------------------------------------------------------------------
# Not packaged for bookworm: build it from the trixie source package. The deb-src entry lives
# in a sources file and lists directory of its own, so the system's apt state never sees trixie.
pg_sharedir=$("$PG_BIN/pg_config" --sharedir 2>/dev/null || echo "/usr/share/postgresql/$PG_MAJOR")
if [ ! -f "$pg_sharedir/extension/vector.control" ]; then
  log "building pgvector from the trixie source package"
  mapfile -t need < <(missing_packages "postgresql-server-dev-$PG_MAJOR" build-essential dpkg-dev)
  [ "${#need[@]}" -gt 0 ] && apt_install "${need[@]}"

  # Reuse the mirror this machine is already configured with.
  mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
    grep -E '^(URIs:|deb[[:space:]])' | grep -oE '[a-z]+://[^[:space:]]+' | grep -v security | head -n1 || true)
  [ -n "$mirror" ] || { log "no Debian mirror found in /etc/apt"; exit 1; }

  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  mkdir -p "$work/lists/partial"
  echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main" >"$work/trixie-src.list"
  apt_opts=(-o "Dir::Etc::SourceList=$work/trixie-src.list" -o "Dir::Etc::SourceParts=-"
    -o "Dir::State::Lists=$work/lists" -o "APT::Sandbox::User=root")
  as_root apt-get "${apt_opts[@]}" update -qq
  (cd "$work" && as_root apt-get "${apt_opts[@]}" source --download-only -qq pgvector >/dev/null)
  tar -xzf "$work"/pgvector_*.orig.tar.gz -C "$work"
  src=$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'pgvector*' | head -n1)
  make -s -C "$src" PG_CONFIG="$PG_BIN/pg_config" OPTFLAGS="" >/dev/null
  as_root make -s -C "$src" PG_CONFIG="$PG_BIN/pg_config" install >/dev/null
  log "pgvector $(grep -oE "[0-9]+\.[0-9]+\.[0-9]+" "$pg_sharedir/extension/vector.control" | head -n1) installed"
fi

# --- PostgreSQL -------------------------------------------------------------------------
if ! pg_lsclusters -h 2>/dev/null | awk -v v="$PG_MAJOR" '$1 == v && $2 == "main"' | grep -q .; then
  log "creating PostgreSQL $PG_MAJOR cluster 'main'"
  as_root pg_createcluster "$PG_MAJOR" main --port "$PG_PORT" -- --auth-local=peer --auth-host=scram-sha-256 >/dev/null
fi
if ! pg_lsclusters -h | awk -v v="$PG_MAJOR" '$1 == v && $2 == "main" && $4 == "online"' | grep -q .; then
  log "starting PostgreSQL $PG_MAJOR"
  # listen_addresses stays Debian's default ('localhost'): loopback only.
  as_root pg_ctlcluster --skip-systemctl-redirect "$PG_MAJOR" main start
fi
for _ in $(seq 1 50); do
  "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" && break
  sleep 0.2
done
"$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" || { log "PostgreSQL did not become ready"; exit 1; }

# Role with a password, so the URL works under both trust and scram host authentication.
psql_super -d postgres <<SQL
SELECT format('CREATE ROLE %I LOGIN CREATEDB PASSWORD %L', '$DB_USER', '$DB_PASSWORD')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$DB_USER') \gexec
SQL
for db in "$DB_NAME" "$DB_TEST_NAME" "$DB_TEMPLATE_NAME"; do
  psql_super -d postgres <<SQL
SELECT format('CREATE DATABASE %I OWNER %I', '$db', '$DB_USER')
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = '$db') \gexec
SQL
  # The extension needs a superuser to create; the application's migrations then find it.
  psql_super -d "$db" -c 'CREATE EXTENSION IF NOT EXISTS vector'
done
# Tests clone fresh databases (with pgvector, without migrations) from the template.
psql_super -d postgres -c "ALTER DATABASE \"$DB_TEMPLATE_NAME\" IS_TEMPLATE true"

# --- Redis ------------------------------------------------------------------------------
if ! redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; then
  log "starting Redis on 127.0.0.1:$REDIS_PORT"
  as_root mkdir -p /var/lib/redis /var/log/redis
  as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" \
    --appendonly no --dir /var/lib/redis --logfile /var/log/redis/services.log
  for _ in $(seq 1 50); do
    redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && break
    sleep 0.1
  done
  redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping | grep -q PONG || { log "Redis did not start"; exit 1; }
fi

pgvector_version=$(psql_super -d "$DB_NAME" -tA -c "SELECT extversion FROM pg_extension WHERE extname = 'vector'")
log "PostgreSQL $PG_MAJOR + pgvector $pgvector_version and Redis $(redis-server --version | grep -oE 'v=[0-9.]+' | cut -c3-) are up"
echo "DATABASE_URL=postgres://$DB_USER:$DB_PASSWORD@127.0.0.1:$PG_PORT/$DB_NAME"
echo "TEST_DATABASE_URL=postgres://$DB_USER:$DB_PASSWORD@127.0.0.1:$PG_PORT/$DB_TEST_NAME"
echo "REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0"
