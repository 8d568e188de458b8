#!/usr/bin/env bash
# Soak of forwarded ports (issue 8, item 10), outside the default suite: forks COUNT children (300)
# with one forward each, CONCURRENCY (8) at a time, with egress EGRESS (nat or none), in a home and
# memory dir of its own; checks that no fork failed, every host port is distinct and answers, and
# that afterwards no QEMU or passt, no listening port, no file in the memory dir is left and host
# memory is back to its baseline. Memory: ~56 MiB per child with nat (passt ~19 MiB of it), ~37 with
# none. Usage: scripts/soak-ports.sh [COUNT]   (env: EGRESS, CONCURRENCY, ROUNDS)
set -euo pipefail
cd "$(dirname "$0")/.."
export SOAK_COUNT=${1:-${COUNT:-300}} SOAK_EGRESS=${EGRESS:-nat} SOAK_CONCURRENCY=${CONCURRENCY:-8} SOAK_ROUNDS=${ROUNDS:-1}
work=$(mktemp -d /tmp/forkvm-soak-ports-XXXXXX)
export FORKVM_HOME=$work/home FORKVM_MEMDIR=/dev/shm/$(basename "$work")
cleanup() {
  # Whatever the run left (it removes its own VMs): processes naming this home, then the files.
  for pid in $(grep -l -a -F "$work" /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3); do kill -9 "$pid" 2>/dev/null || true; done
  rm -rf "$work" "$FORKVM_MEMDIR"
}
trap cleanup EXIT
node -r ts-node/register/transpile-only -e '
const fs = require("node:fs");
const { Engine } = require("./engine/engine");
const { buildDefaultImage } = require("./engine/image");
const { netHelperPids } = require("./engine/net");
const count = Number(process.env.SOAK_COUNT), egress = process.env.SOAK_EGRESS, concurrency = Number(process.env.SOAK_CONCURRENCY), rounds = Number(process.env.SOAK_ROUNDS);
const home = process.env.FORKVM_HOME, memDir = process.env.FORKVM_MEMDIR;
const availMiB = () => Math.round(Number(/MemAvailable:\s+(\d+)/.exec(fs.readFileSync("/proc/meminfo", "utf8"))[1]) / 1024);
const shmMiB = () => { try { return Math.round(fs.readdirSync(memDir).reduce((s, f) => s + fs.statSync(`${memDir}/${f}`).blocks * 512, 0) / 1048576); } catch { return 0; } };
const leftovers = () => fs.readdirSync("/proc").filter((p) => /^\d+$/.test(p)).filter((p) => { try { return fs.readFileSync(`/proc/${p}/cmdline`, "utf8").includes(home); } catch { return false; } });
const listening = (ports) => { const t = fs.readFileSync("/proc/net/tcp", "utf8"); return ports.filter((p) => new RegExp(`:${p.toString(16).toUpperCase().padStart(4, "0")} [0-9A-F:]+ 0A `).test(t)); };
(async () => {
  const engine = new Engine();
  await buildDefaultImage({});
  await engine.createParent({ name: "sp", memoryMiB: 128, accel: "tcg", init: ["mkdir -p /www && echo soak > /www/index.html && httpd -p 8000 -h /www"] });
  await engine.createTemplate({ name: "st", parent: "sp", source: "frozen" });
  const base = { mem: availMiB(), shm: shmMiB() };
  console.log(`baseline: MemAvailable ${base.mem} MiB, memory dir ${base.shm} MiB; forking ${count} children (egress ${egress}, ${concurrency} at a time), ${rounds} round(s)`);
  let bad = 0;
  for (let round = 1; round <= rounds; round++) {
    const t0 = Date.now();
    const r = await engine.fork({ template: "st", count, prefix: "soak", concurrency, egress, forwards: [{ guest: 8000 }], readyTimeoutS: 300 });
    const forkS = (Date.now() - t0) / 1000;
    const ports = r.children.map((c) => c.forwards[0].host);
    const distinct = new Set(ports).size;
    let answered = 0;
    for (let i = 0; i < ports.length; i += 32) {
      const got = await Promise.all(ports.slice(i, i + 32).map((p) => fetch(`http://127.0.0.1:${p}/`, { signal: AbortSignal.timeout(20000) }).then((x) => x.text()).catch(() => "")));
      answered += got.filter((b) => b.trim() === "soak").length;
    }
    const peak = { mem: availMiB(), shm: shmMiB() };
    const dirs = r.children.map((c) => engine.store.dir("vms", c.name));
    await engine.remove(r.children.map((c) => c.name), { force: true });
    const deadline = Date.now() + 20000;
    while (Date.now() < deadline && (dirs.some((d) => netHelperPids(d).length) || listening(ports).length)) await new Promise((res) => setTimeout(res, 200));
    const left = { helpers: dirs.filter((d) => netHelperPids(d).length).length, ports: listening(ports).length };
    const failures = r.failed.map((f) => `${f.name}: ${f.error.message}`);
    console.log(`round ${round}: ${r.children.length} forked in ${forkS.toFixed(1)} s, ${r.failed.length} failed, ${distinct} distinct ports, ${answered} answered; peak MemAvailable ${peak.mem} MiB (${Math.round((base.mem - peak.mem) / Math.max(1, r.children.length))} MiB per child), memory dir ${peak.shm} MiB; after rm: ${left.helpers} passt left, ${left.ports} ports still listening`);
    for (const f of failures.slice(0, 10)) console.log(`  failed: ${f}`);
    if (r.failed.length || distinct !== count || answered !== count || left.helpers || left.ports) bad++;
  }
  await engine.remove(["st", "sp"], { force: true });
  await new Promise((res) => setTimeout(res, 2000));
  const end = { mem: availMiB(), shm: shmMiB(), procs: leftovers().length, files: fs.existsSync(memDir) ? fs.readdirSync(memDir).length : 0 };
  console.log(`after: MemAvailable ${end.mem} MiB (baseline ${base.mem}), memory dir ${end.shm} MiB in ${end.files} files, ${end.procs} processes naming the home`);
  if (end.procs || end.files) bad++;
  console.log(bad ? "soak-ports: FAILED" : "soak-ports: ok");
  process.exitCode = bad ? 1 : 0;
})().catch((e) => { console.error(e); process.exitCode = 1; });
'
