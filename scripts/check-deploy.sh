#!/usr/bin/env bash
# Checks the deployment files without a Docker engine: the compose file is parsed and validated
# by Debian's docker-compose, the Dockerfile by a linter, and both for the properties we rely on.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[check-deploy] %s\n' "$*"; }
fail() { printf '[check-deploy] FAIL: %s\n' "$*" >&2; exit 1; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v docker-compose >/dev/null 2>&1; then
  log "installing Debian's docker-compose"
  as_root apt-get install -y -qq docker-compose >/dev/null 2>&1 || {
    as_root apt-get update -qq >/dev/null
    as_root apt-get install -y -qq docker-compose >/dev/null
  }
fi

log "docker-compose config"
# API_KEYS is required by the compose file; any value lets `config` validate the rest.
API_KEYS="${API_KEYS:-check:admin:0123456789abcdef}" docker-compose -f docker-compose.yml config --quiet
if env -u API_KEYS docker-compose -f docker-compose.yml config --quiet 2>/dev/null; then
  fail 'compose must refuse to start the service without API_KEYS'
fi

log "dockerfilelint"
npx --no-install dockerfilelint Dockerfile

# Properties the linters do not enforce but the deployment depends on.
grep -qE '^FROM .* AS build' Dockerfile || fail 'Dockerfile has no build stage'
[ "$(grep -cE '^FROM ' Dockerfile)" -ge 2 ] || fail 'Dockerfile is not multi-stage'
grep -qE -- '--omit=dev' Dockerfile || fail 'runtime image must hold production dependencies only'
grep -qE '^USER node' Dockerfile || fail 'Dockerfile must run as the non-root node user'
grep -qE '^HEALTHCHECK ' Dockerfile || fail 'Dockerfile has no HEALTHCHECK'
grep -qE 'image: pgvector/pgvector:[0-9]+\.[0-9]+\.[0-9]+-pg[0-9]+' docker-compose.yml \
  || fail 'compose must pin the official pgvector image to a release'
grep -qE 'image: redis:[0-9]' docker-compose.yml || fail 'compose must pin the Redis image'
[ "$(grep -c 'condition: service_healthy' docker-compose.yml)" -ge 2 ] \
  || fail 'app must wait for healthy Postgres and Redis'
[ "$(grep -c 'healthcheck:' docker-compose.yml)" -ge 3 ] || fail 'every service needs a healthcheck'

log 'deployment files OK'
