#!/usr/bin/env bash
# Soak (issue 8), outside the default suite: forks and destroys 500 children (5 rounds of 100,
# each child with one forwarded port) from one 128 MiB TCG template, and reports host memory
# (MemAvailable) and /dev/shm before, at each round's peak, after each round and at the end, and
# anything left behind: processes (QEMU, passt), files and sockets in the state directory, bytes in
# the memory directory, forwarded ports still held, duplicate host ports, this process's fds and
# child processes growing. Exits 1 when anything leaked, a child failed or the deadline passed.
#
#   scripts/soak.sh                      # 5 rounds x 100 children (several minutes on 2 cores)
#   scripts/soak.sh 3 50                 # rounds, children per round
#   FORKVM_SOAK_DEADLINE_S=900 FORKVM_SOAK_CONCURRENCY=4 FORKVM_SOAK_FORWARDS=0 scripts/soak.sh
#   FORKVM_SOAK_MEM_WAIT_S=180           # how long the end waits for MemAvailable to come back (it
#                                        # returns over tens of seconds after 100 children)
#   FORKVM_SOAK_JSON=soak.json scripts/soak.sh   # every figure, per round, as JSON
#
# It runs in a state directory and memory directory of its own (removed afterwards) and needs the
# default guest image (`forkvm image build`; `npm run setup` builds it). A short round of the same
# code runs in `npm test` (test/engine/soak.test.ts). Other QEMUs on the host move MemAvailable:
# run it on a quiet host (`pgrep -c qemu-system`) for figures worth comparing.
set -euo pipefail
cd "$(dirname "$0")/.."

scratch=$(mktemp -d "${TMPDIR:-/tmp}/forkvm-soak-XXXXXX")
export FORKVM_HOME="$scratch/home"
export FORKVM_MEMDIR="/dev/shm/$(basename "$scratch")"
cleanup() {
  # The soak removes what it made; this only catches a soak that was itself killed.
  for pid in $(pgrep -f -- "$scratch" || true); do kill -9 "$pid" 2>/dev/null || true; done
  rm -rf "$scratch" "$FORKVM_MEMDIR"
}
trap cleanup EXIT

echo "soak: home $FORKVM_HOME, memory directory $FORKVM_MEMDIR; $(pgrep -c qemu-system || true) QEMUs on the host now"
node -r ts-node/register/transpile-only test/soak/soak.ts "${1:-5}" "${2:-100}"
