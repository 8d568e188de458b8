#!/usr/bin/env bash
# `npm test`: installs what the suite needs, type-checks, then runs every uvu suite and ends
# with the plain line "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
[ -d node_modules/uvu ] || npm ci --no-audit --no-fund || exit 1
npx tsc -p tsconfig.json --noEmit || { echo "0 passed, 1 failed"; exit 1; }
exec node -r ts-node/register/transpile-only test/run.ts "$@"
