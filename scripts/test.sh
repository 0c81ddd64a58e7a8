#!/usr/bin/env bash
# The whole test suite from a fresh clone: local services, dependencies, static checks, build,
# unit tests, then e2e/integration tests against real Postgres + pgvector and Redis.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "services (Postgres 15 + pgvector, Redis 7)"
bash scripts/services.sh
step "dependencies (no engine warnings on this Node)"
install_log=$(mktemp)
npm ci --no-audit --no-fund 2>&1 | tee "$install_log"
if grep -q EBADENGINE "$install_log"; then
  echo "a dependency does not support $(node --version): pin one that does" >&2
  exit 1
fi
rm -f "$install_log"
step "lint";        npm run lint
step "format";      npm run format:check
step "type-check";  npm run typecheck
step "build";       npm run build
step "deploy files (compose, Dockerfile)"; npm run check:deploy
step "unit tests";  npm run test:unit -- --ci
step "e2e tests";   npm run test:e2e -- --ci
step "all checks passed"
