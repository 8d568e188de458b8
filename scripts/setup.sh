#!/usr/bin/env bash
# Prepares a Debian/Ubuntu host for forkvm: QEMU, qemu-img, busybox-static, xz-utils and passt (the
# network of VMs with egress nat) from apt (apt-get update only when the package lists lack them),
# npm dependencies, the default guest image.
# Idempotent and quiet: prints one line per step it had to do; safe to run again.
set -euo pipefail

cd "$(dirname "$0")/.."
PACKAGES=(qemu-system-x86 qemu-utils busybox-static xz-utils passt)

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: %s\n' "$*" >&2; exit 1; }
# Runs a command silently; on failure shows its last output lines and stops.
quietly() {
  local what=$1 out
  shift
  out=$("$@" 2>&1) || { printf '%s\n' "$out" | tail -n 8 >&2; die "cannot $what ($1 failed)"; }
}

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || die "cannot install packages: not root and no sudo"
  SUDO=(sudo)
fi

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q ' installed$'; }
known() { [ -n "$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ && $2 != "(none)" {print $2}')" ]; }

command -v apt-get >/dev/null 2>&1 || die "cannot install packages: apt-get not found (forkvm needs Debian or Ubuntu)"

missing=()
for p in "${PACKAGES[@]}"; do installed "$p" || missing+=("$p"); done

# The guest kernel comes from linux-image-amd64's dependency: the lists must know it too.
need_update=0
for p in "${missing[@]}" linux-image-amd64; do known "$p" || need_update=1; done
if [ "$need_update" = 1 ]; then
  say "apt-get update"
  quietly "update the package lists" "${SUDO[@]}" apt-get update -qq
fi

if [ "${#missing[@]}" -gt 0 ]; then
  say "installing ${missing[*]}"
  quietly "install ${missing[*]}" "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The account QEMU drops root to when forkvm runs as root (engine/qemu/run-as.ts). Never fatal:
# without it QEMU runs as root under its seccomp sandbox (engine/README.md, limits).
if [ "$(id -u)" -eq 0 ] && ! getent passwd forkvm-qemu >/dev/null 2>&1; then
  if useradd --system --no-create-home --shell /usr/sbin/nologin forkvm-qemu >/dev/null 2>&1; then
    say "created user forkvm-qemu (QEMU drops root to it)"
  else
    say "could not create user forkvm-qemu: QEMU will run as root"
  fi
fi

if [ ! -d node_modules/uvu ] || [ ! -d node_modules/zod ]; then
  command -v npm >/dev/null 2>&1 || die "cannot install npm dependencies: npm not found (forkvm needs Node.js >= 20)"
  say "installing npm dependencies"
  if [ -f package-lock.json ]; then
    quietly "install npm dependencies" npm ci --no-audit --no-fund
  else
    quietly "install npm dependencies" npm install --no-audit --no-fund
  fi
fi

# Build (or confirm) the default guest image; a no-op when its inputs did not change.
node -r ts-node/register/transpile-only -e '
  const { buildDefaultImage } = require("./engine/image");
  let built = false;
  buildDefaultImage({ onProgress: (s) => { if (/^assemble/.test(s)) built = true; } })
    .then((img) => { if (built) console.log(`setup: built guest image ${img.sha256.slice(0, 12)} (kernel ${img.kernelVersion})`); })
    .catch((e) => { console.error(`setup: ${e.message}`); if (e.details && e.details.stderr) console.error(e.details.stderr); process.exit(1); });
'
