#!/usr/bin/env bash
# From a fresh clone to a running service: local services, dependencies, build, migrations,
# start. Uses .env (created from .env.example when absent). Ctrl-C stops the service gracefully.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/services.sh >/dev/null
[ -f .env ] || { cp .env.example .env; echo "[start] created .env from .env.example"; }
npm ci --no-audit --no-fund
npm run build
npm run migrate
exec node dist/main.js
