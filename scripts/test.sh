#!/usr/bin/env bash
# `npm test` (after its pretest hook ran scripts/setup.sh and built dist/): runs every uvu suite,
# each in its own process, and ends with the plain line "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
exec node -r ts-node/register/transpile-only test/run.ts "$@"
