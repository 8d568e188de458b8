// The soak (issue 8): fork and destroy children in rounds from one template and measure what is
// left after each round and at the end: host memory (MemAvailable), /dev/shm and memory-directory
// bytes, processes (QEMU, passt), files and sockets in the state directory, this process's fds and
// child processes, forwarded host ports. Used by scripts/soak.sh (500 children: 5 rounds of 100)
// and, as a short round, by test/engine/soak.test.ts (outside this directory: the suite runner
// never runs test/soak/ by itself).
import * as fs from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import { Engine } from "../../engine/engine";
import { availableMemoryMiB } from "../../engine/util/meminfo";

export interface Snapshot {
  /** MemAvailable, MiB. */
  memAvailableMiB: number;
  /** Used bytes of /dev/shm (every user's), MiB. */
  shmUsedMiB: number;
  /** Bytes in the memory directory (ours), MiB, and its entries. */
  memDirMiB: number;
  memDirFiles: number;
  /** Live processes whose command line names the home or the memory directory (QEMU, passt, ...). */
  processes: Array<{ pid: number; what: string }>;
  /** Every QEMU on the host (ours and anyone else's): others' activity moves MemAvailable. */
  allQemus: number;
  /** Files (not directories) under the home's object directories, and sockets anywhere in the home. */
  objectFiles: string[];
  sockets: string[];
  /** This process's open file descriptors and child processes. */
  fds: number;
  childProcesses: number;
  /** Resident memory of this process and of everyone else's QEMUs (both move MemAvailable), MiB. */
  selfRssMiB: number;
  othersQemuRssMiB: number;
  /** /proc/meminfo Shmem, Cached and SUnreclaim, MiB. */
  meminfo: { shmemMiB: number; cachedMiB: number; slabUnreclaimMiB: number };
}

function rssMiB(pid: number | "self"): number {
  try {
    const m = fs.readFileSync(`/proc/${pid}/status`, "utf8").match(/^VmRSS:\s+(\d+) kB/m);
    return m ? Math.round(Number(m[1]) / 1024) : 0;
  } catch {
    return 0;
  }
}

function meminfo(): Snapshot["meminfo"] {
  const text = (() => { try { return fs.readFileSync("/proc/meminfo", "utf8"); } catch { return ""; } })();
  const kb = (k: string) => Math.round(Number(text.match(new RegExp(`^${k}:\\s+(\\d+) kB`, "m"))?.[1] ?? 0) / 1024);
  return { shmemMiB: kb("Shmem"), cachedMiB: kb("Cached"), slabUnreclaimMiB: kb("SUnreclaim") };
}

const MiB = 1048576;

function procs(): Array<{ pid: number; cmd: string; ppid: number }> {
  const out: Array<{ pid: number; cmd: string; ppid: number }> = [];
  for (const p of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(p)) continue;
    try {
      const cmd = fs.readFileSync(`/proc/${p}/cmdline`, "utf8").replace(/\0/g, " ").trim();
      const stat = fs.readFileSync(`/proc/${p}/stat`, "utf8");
      const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      if (rest[0] === "Z" || rest[0] === "X") continue;
      out.push({ pid: Number(p), cmd, ppid: Number(rest[1]) });
    } catch { /* gone */ }
  }
  return out;
}

function walk(dir: string, visit: (p: string, st: fs.Stats) => void): void {
  let names: string[] = [];
  try { names = fs.readdirSync(dir); } catch { return; }
  for (const n of names) {
    const p = path.join(dir, n);
    let st: fs.Stats;
    try { st = fs.lstatSync(p); } catch { continue; }
    visit(p, st);
    if (st.isDirectory()) walk(p, visit);
  }
}

/** What the host and this process hold now, as far as `engine`'s home and memory directory are concerned. */
export function snapshot(engine: Engine): Snapshot {
  const { home, memDir } = engine.store;
  const shm = fs.statfsSync("/dev/shm");
  let memBytes = 0, memFiles = 0;
  walk(memDir, (_p, st) => { if (!st.isDirectory()) { memFiles++; memBytes += st.blocks * 512; } });
  const objectFiles: string[] = [];
  const sockets: string[] = [];
  for (const kind of ["vms", "templates", "pools"]) walk(path.join(home, kind), (p, st) => { if (!st.isDirectory()) objectFiles.push(p); });
  walk(home, (p, st) => { if (st.isSocket()) sockets.push(p); });
  const all = procs();
  let fds = 0;
  try { fds = fs.readdirSync("/proc/self/fd").length; } catch { /* not Linux */ }
  return {
    memAvailableMiB: availableMemoryMiB(),
    shmUsedMiB: Math.round(((shm.blocks - shm.bfree) * shm.bsize) / MiB),
    memDirMiB: Math.round((memBytes / MiB) * 10) / 10,
    memDirFiles: memFiles,
    processes: all.filter((p) => p.cmd.includes(home) || p.cmd.includes(memDir)).map((p) => ({ pid: p.pid, what: p.cmd.split(" ")[0]! })),
    allQemus: all.filter((p) => /qemu-system/.test(p.cmd.split(" ")[0] ?? "")).length,
    selfRssMiB: rssMiB("self"),
    othersQemuRssMiB: all.filter((p) => /qemu-system/.test(p.cmd.split(" ")[0] ?? "") && !p.cmd.includes(home) && !p.cmd.includes(memDir)).reduce((a, p) => a + rssMiB(p.pid), 0),
    meminfo: meminfo(),
    objectFiles,
    sockets,
    fds,
    childProcesses: all.filter((p) => p.ppid === process.pid).length,
  };
}

/** Whether 127.0.0.1:port can be bound now (nobody holds it). */
export function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once("error", () => resolve(false));
    s.listen(port, "127.0.0.1", () => s.close(() => resolve(true)));
  });
}

export interface RoundResult {
  round: number;
  children: number;
  failed: string[];
  forkMs: number;
  removeMs: number;
  duplicatePorts: number[];
  /** At the peak (all children running) and after their removal. */
  peak: Snapshot;
  after: Snapshot;
  portsStillHeld: number[];
  /** Processes of ours still running when `rm` returned (by program), and how long until none ran and every port was free. */
  lingering: string;
  settleMs: number;
}

/** An error's message with its causes' (what a masked failure hides). */
function causes(err: unknown): string {
  const out: string[] = [];
  for (let e = err; e instanceof Error && out.length < 5; e = (e as { cause?: unknown }).cause) out.push(`${(e as { code?: string }).code ?? e.name}: ${e.message}`);
  return out.join(" <- caused by ");
}

function summary(ps: Array<{ what: string }>): string {
  const by = new Map<string, number>();
  for (const p of ps) by.set(path.basename(p.what), (by.get(path.basename(p.what)) ?? 0) + 1);
  return [...by].map(([w, n]) => `${n} ${w}`).join(", ");
}

/** Milliseconds until no process of ours runs and every port is free (polled), at most `maxMs`. */
async function settled(engine: Engine, ports: number[], maxMs: number): Promise<number> {
  const t0 = Date.now();
  for (;;) {
    const busy = snapshot(engine).processes.length > 0 || (await Promise.all(ports.map(portFree))).some((free) => !free);
    if (!busy || Date.now() - t0 > maxMs) return Date.now() - t0;
    await new Promise((r) => setTimeout(r, 20));
  }
}

export interface SoakOptions {
  rounds: number;
  size: number;
  concurrency?: number;
  /** Stop starting new rounds after this (the running round finishes and is cleaned up). */
  deadlineMs: number;
  /** Give each child one forwarded port (guest 80): the soak of forwards. */
  forwards?: boolean;
  memoryMiB?: number;
  log?: (line: string) => void;
  /** How far below its baseline MemAvailable may end (default 256 MiB), and how long to wait for it at the end (default 30 s). */
  memToleranceMiB?: number;
  memWaitMs?: number;
}

export interface SoakResult {
  baseline: Snapshot;
  rounds: RoundResult[];
  final: Snapshot;
  /** Everything that looks leaked at the end, one line each; empty when nothing is. */
  leaks: string[];
  timedOut: boolean;
  /** How long after the cleanup MemAvailable took to come back within the tolerance (or memWaitMs). */
  memSettleMs: number;
  totalMs: number;
}

/**
 * Boots one parent, freezes it, forks `size` children `rounds` times (each round removed before
 * the next), removes the template, and compares the end with the start. Always cleans up.
 */
export async function soak(engine: Engine, opts: SoakOptions): Promise<SoakResult> {
  const log = opts.log ?? (() => undefined);
  const t0 = Date.now();
  const baseline = snapshot(engine);
  const rounds: RoundResult[] = [];
  let timedOut = false;
  try {
    log(`baseline: MemAvailable ${baseline.memAvailableMiB} MiB, /dev/shm used ${baseline.shmUsedMiB} MiB, ${baseline.allQemus} QEMUs on the host`);
    await engine.createParent({ name: "soak-p", memoryMiB: opts.memoryMiB ?? 128, accel: "tcg", init: ["echo warm > /tmp/warm"] });
    await engine.createTemplate({ name: "soak-t", parent: "soak-p", source: "frozen", quiesceTimeoutMs: 2000 });
    log(`template ready after ${Date.now() - t0} ms`);
    for (let round = 1; round <= opts.rounds; round++) {
      if (Date.now() - t0 > opts.deadlineMs) { timedOut = true; log(`deadline of ${opts.deadlineMs} ms passed: no round ${round}`); break; }
      const f0 = Date.now();
      const r = await engine.fork({ template: "soak-t", count: opts.size, prefix: `s${round}`, concurrency: opts.concurrency ?? 4, forwards: opts.forwards ? [{ guest: 80 }] : [], readyTimeoutS: 120 });
      const forkMs = Date.now() - f0;
      const ports = r.children.flatMap((c) => c.forwards.map((x) => x.host));
      const duplicatePorts = [...new Set(ports.filter((p, i) => ports.indexOf(p) !== i))];
      // A sample of the children answers (the rest were agent-ready when fork returned them).
      for (const c of r.children.filter((_, i) => i % Math.max(1, Math.floor(r.children.length / 5)) === 0)) {
        const x = await engine.exec(c.name, ["cat", "/tmp/warm"], { timeoutMs: 30_000 });
        if (x.stdout.toString().trim() !== "warm") r.failed.push({ name: c.name, error: new Error(`answered ${x.stdout}`) as never });
      }
      const peak = snapshot(engine);
      const d0 = Date.now();
      await engine.remove([...r.children.map((c) => c.name), ...r.failed.map((f) => f.name)], { force: true });
      const removeMs = Date.now() - d0;
      // What outlives `rm` for a moment (a VM's network process, QEMU's log readers) and how long.
      const lingering = snapshot(engine).processes;
      const settleMs = await settled(engine, ports, 10_000);
      const after = snapshot(engine);
      const portsStillHeld: number[] = [];
      for (const p of ports) if (!(await portFree(p))) portsStillHeld.push(p);
      const res: RoundResult = {
        round, children: r.children.length, failed: r.failed.map((x) => `${x.name}: ${causes(x.error)}`), forkMs, removeMs, duplicatePorts, peak, after, portsStillHeld,
        lingering: summary(lingering), settleMs,
      };
      rounds.push(res);
      log(`round ${round}: ${res.children}/${opts.size} forked in ${forkMs} ms (${res.failed.length} failed), removed in ${removeMs} ms; ` +
        `peak MemAvailable ${peak.memAvailableMiB} MiB, shm ${peak.shmUsedMiB} MiB (ours ${peak.memDirMiB} MiB); ` +
        `when rm returned ${lingering.length ? `${summary(lingering)} still ran, gone ${settleMs} ms later` : "nothing of ours ran"}; ` +
        `after: MemAvailable ${after.memAvailableMiB} MiB, shm ${after.shmUsedMiB} MiB (ours ${after.memDirMiB} MiB), ${after.processes.length} processes, fds ${after.fds}`);
    }
  } finally {
    const names = [...engine.listVms().map((v) => v.name), ...engine.listTemplates().map((t) => t.name)];
    await engine.remove(names, { force: true }).catch((e) => log(`cleanup: ${(e as Error).message}`));
  }
  // Memory of killed processes comes back over seconds (measured: ~10 s after 20 children): wait
  // for MemAvailable to return within the tolerance, at most memWaitMs, before judging.
  const m0 = Date.now();
  const tolerance = opts.memToleranceMiB ?? 256;
  while (availableMemoryMiB() < baseline.memAvailableMiB - tolerance && Date.now() - m0 < (opts.memWaitMs ?? 30_000)) await new Promise((r) => setTimeout(r, 500));
  const memSettleMs = Date.now() - m0;
  const final = snapshot(engine);
  const leaks: string[] = [];
  for (const p of final.processes) leaks.push(`process ${p.pid} (${p.what}) still runs`);
  if (final.memDirFiles) leaks.push(`${final.memDirFiles} files (${final.memDirMiB} MiB) left in ${engine.store.memDir}`);
  for (const f of final.objectFiles) leaks.push(`file left: ${f}`);
  for (const s of final.sockets) leaks.push(`socket left: ${s}`);
  for (const r of rounds) {
    for (const p of r.portsStillHeld) leaks.push(`round ${r.round}: port ${p} still held after its child was removed`);
    if (r.duplicatePorts.length) leaks.push(`round ${r.round}: host ports given twice: ${r.duplicatePorts.join(", ")}`);
    for (const f of r.failed) leaks.push(`round ${r.round}: ${f}`);
  }
  // Per-round growth of this process's fds or children would be a leak in the engine itself.
  if (rounds.length >= 2) {
    const [a, b] = [rounds[0]!.after, rounds.at(-1)!.after];
    if (b.fds > a.fds + 2) leaks.push(`this process's open fds grew from ${a.fds} to ${b.fds} over ${rounds.length - 1} rounds`);
    if (b.childProcesses > a.childProcesses) leaks.push(`this process's child processes grew from ${a.childProcesses} to ${b.childProcesses}`);
  }
  log(`final vs baseline: this process's RSS ${baseline.selfRssMiB} -> ${final.selfRssMiB} MiB, other QEMUs' RSS ${baseline.othersQemuRssMiB} -> ${final.othersQemuRssMiB} MiB, ` +
    `Shmem ${baseline.meminfo.shmemMiB} -> ${final.meminfo.shmemMiB}, Cached ${baseline.meminfo.cachedMiB} -> ${final.meminfo.cachedMiB}, SUnreclaim ${baseline.meminfo.slabUnreclaimMiB} -> ${final.meminfo.slabUnreclaimMiB} MiB`);
  log(`final (${memSettleMs} ms after the cleanup): MemAvailable ${final.memAvailableMiB} MiB (baseline ${baseline.memAvailableMiB}), /dev/shm used ${final.shmUsedMiB} MiB (baseline ${baseline.shmUsedMiB}), ours ${final.memDirMiB} MiB in ${final.memDirFiles} files, ${final.processes.length} processes, ${final.sockets.length} sockets, ${final.allQemus} QEMUs on the host (baseline ${baseline.allQemus}); ${leaks.length} leaks`);
  return { baseline, rounds, final, leaks, timedOut, memSettleMs, totalMs: Date.now() - t0 };
}

// `node -r ts-node/register/transpile-only test/soak/soak.ts [rounds] [size]` (scripts/soak.sh sets the home).
if (require.main === module) {
  const rounds = Number(process.argv[2] ?? process.env.FORKVM_SOAK_ROUNDS ?? 5);
  const size = Number(process.argv[3] ?? process.env.FORKVM_SOAK_SIZE ?? 100);
  const deadlineMs = Number(process.env.FORKVM_SOAK_DEADLINE_S ?? 1800) * 1000;
  const engine = new Engine();
  soak(engine, {
    rounds, size, deadlineMs, forwards: process.env.FORKVM_SOAK_FORWARDS !== "0", concurrency: Number(process.env.FORKVM_SOAK_CONCURRENCY ?? 4),
    memWaitMs: Number(process.env.FORKVM_SOAK_MEM_WAIT_S ?? 180) * 1000, log: (l) => console.log(l),
  })
    .then((r) => {
      if (process.env.FORKVM_SOAK_JSON) fs.writeFileSync(process.env.FORKVM_SOAK_JSON, JSON.stringify(r, null, 2) + "\n");
      for (const l of r.leaks) console.log(`LEAK: ${l}`);
      const forked = r.rounds.reduce((a, x) => a + x.children, 0);
      console.log(`${forked} children forked and destroyed in ${r.rounds.length} rounds in ${(r.totalMs / 1000).toFixed(0)} s${r.timedOut ? " (deadline passed)" : ""}: ${r.leaks.length ? `${r.leaks.length} leaks` : "nothing leaked"}`);
      process.exitCode = r.leaks.length || r.timedOut || forked < rounds * size ? 1 : 0;
    }, (err) => {
      console.error(`soak failed: ${(err as Error).message}`);
      process.exitCode = 1;
    });
}
