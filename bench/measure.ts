// The measurements of `npm run bench`, each on the engine's public API with wall-clock time
// taken around the call (what a user waits for), plus the engine's own per-child phase timings.
import * as fs from "node:fs";
import * as os from "node:os";
import { performance } from "node:perf_hooks";
import type { Engine } from "../engine/engine";
import { doctor } from "../engine/doctor";
import { availableMemoryMiB } from "../engine/util/meminfo";
import type { VmManifest } from "../engine/state/manifest";
import { median, medianFields, round } from "./stats";

export interface BenchCtx {
  engine: Engine;
  accel: "auto" | "tcg" | "kvm";
  say: (msg: string) => void;
}

export interface HostInfo {
  hostname: string;
  cores: number;
  cpuModel: string;
  memoryGiB: number;
  kernel: string;
  qemu: string;
  machine: string;
  accel: string;
  accelReason: string;
}

export async function hostInfo(engine: Engine): Promise<HostInfo> {
  const d = await doctor(engine.store);
  if ("error" in d.accel) throw new Error(`no accelerator: ${d.accel.error}`);
  if (d.qemu.error) throw new Error(d.qemu.error);
  return {
    hostname: os.hostname(), cores: os.cpus().length, cpuModel: os.cpus()[0]?.model ?? "?",
    memoryGiB: round(os.totalmem() / 2 ** 30), kernel: os.release(),
    qemu: d.qemu.version ?? "?", machine: d.qemu.machine ?? "?", accel: d.accel.accel, accelReason: d.accel.reason,
  };
}

const now = () => performance.now();
const settle = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Removes VMs in parallel chunks (remove() itself is sequential). */
export async function removeAll(engine: Engine, names: string[], chunks = 8): Promise<void> {
  const per = Math.ceil(names.length / chunks) || 1;
  const groups = Array.from({ length: Math.ceil(names.length / per) }, (_, i) => names.slice(i * per, (i + 1) * per));
  await Promise.all(groups.map((g) => engine.remove(g, { force: true })));
}

export interface TemplateRun {
  memoryMiB: number;
  parentBootMs: number;
  /** How long the engine waited for the parent to go idle before taking the template. */
  quiesceMs?: number;
  freezeMs: number;
  runningDowntimeMs?: number;
  runningQemuDowntimeMs?: number;
  runningCaptureMs?: number;
  runningBuildMs?: number;
  streamMiB?: number;
}

/**
 * Boots a parent of `memoryMiB`, takes a running-mode template from it (the source's downtime),
 * then a frozen one (the parent is consumed). Leaves templates `t<mem>-live` and `t<mem>`.
 */
export async function makeTemplates(c: BenchCtx, memoryMiB: number): Promise<TemplateRun> {
  const p = `p${memoryMiB}`;
  c.say(`cold-booting parent ${p} (${memoryMiB} MiB)`);
  const t0 = now();
  await c.engine.createParent({ name: p, memoryMiB, accel: c.accel, init: ["echo warm > /tmp/warm"] });
  const parentBootMs = round(now() - t0);
  c.say(`running-mode template of ${p}`);
  const live = await c.engine.createTemplate({ name: `t${memoryMiB}-live`, parent: p, source: "running" });
  c.say(`frozen template of ${p}`);
  const frozen = await c.engine.createTemplate({ name: `t${memoryMiB}`, parent: p, source: "frozen" });
  return {
    memoryMiB, parentBootMs, quiesceMs: frozen.timings.quiesceMs, freezeMs: frozen.timings.freezeMs,
    runningDowntimeMs: live.timings.downtimeMs, runningQemuDowntimeMs: live.timings.qemuDowntimeMs,
    runningCaptureMs: live.timings.captureMs, runningBuildMs: live.timings.buildMs,
    streamMiB: live.timings.streamBytes !== undefined ? round(live.timings.streamBytes / 1048576) : undefined,
  };
}

/** Cold boot to agent-ready from an existing disk image (no mkfs), `n` times; wall ms each. */
export async function coldBoots(c: BenchCtx, diskImage: string, memoryMiB: number, n: number): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    c.say(`cold boot ${i + 1}/${n}`);
    const name = `cold-${i + 1}`;
    const t0 = now();
    await c.engine.createParent({ name, memoryMiB, accel: c.accel, diskImage });
    out.push(round(now() - t0));
    await c.engine.remove([name], { force: true });
  }
  return out;
}

export interface ForkSample {
  /** Wall time of the fork() call for one child: until it answered its identity step. */
  readyMs: number;
  /** Wall time until the child's vCPU ran (`cont` returned): readyMs minus the identity step. */
  runningMs: number;
  /** The engine's own phase timings of that child (from the start of its fork). */
  phases: Record<string, number>;
  /** CPU time the child's QEMU used from its start to ready (all threads): contention-free cost. */
  cpuMs?: number;
}

/** CPU time (ms) of every thread of a process so far, from schedstat; undefined when it is gone. */
export function processCpuMs(pid: number): number | undefined {
  try {
    let ns = 0;
    for (const task of fs.readdirSync(`/proc/${pid}/task`)) ns += Number(fs.readFileSync(`/proc/${pid}/task/${task}/schedstat`, "utf8").split(" ")[0]) || 0;
    return round(ns / 1e6);
  } catch {
    return undefined;
  }
}

function sampleOf(vm: VmManifest, wallMs: number): ForkSample {
  const t = vm.timings ?? {};
  const identityMs = (t.readyMs ?? 0) - (t.runningMs ?? 0);
  return { readyMs: round(wallMs), runningMs: round(wallMs - identityMs), phases: { ...t } as Record<string, number>, cpuMs: vm.pid ? processCpuMs(vm.pid) : undefined };
}

/**
 * `n` forks one after another, each a fork() call of one child that is removed before the next
 * (so each fork sees the same host), concurrency 1: latency, not queueing.
 */
export async function sequentialForks(c: BenchCtx, template: string, n: number, clone: "linked" | "full" = "linked"): Promise<ForkSample[]> {
  const out: ForkSample[] = [];
  for (let i = 0; i < n; i++) {
    if (i % 10 === 0 || clone === "full") c.say(`${clone} clone ${i + 1}/${n} of ${template}`);
    const name = `${clone === "full" ? "full" : "seq"}-${i + 1}`;
    const t0 = now();
    const r = await c.engine.fork({ template, names: [name], concurrency: 1, clone });
    const wall = now() - t0;
    if (r.failed.length) throw r.failed[0].error;
    out.push(sampleOf(r.children[0], wall));
    await c.engine.remove([name], { force: true });
  }
  return out;
}

export interface ThroughputPoint {
  n: number;
  concurrency: number;
  readyS: number;
  clonesPerS: number;
  failed: number;
  /** Medians over the children, a couple of seconds after all were ready. */
  childRssMiB: number;
  childPssMiB: number;
  childPrivateMiB: number;
  childSharedWithTemplateMiB: number;
  /** Host MemAvailable before minus after, in total and per child. */
  hostUsedMiB: number;
  hostUsedPerChildMiB: number;
  memAvailableBeforeMiB: number;
  /** Median CPU time of a child's QEMU by the time the stats were taken (ready + ~2 s idle). */
  childCpuMs: number;
  /** Median of the children's own fork-to-ready (queueing included). */
  childReadyP50Ms: number;
  removeS: number;
}

/** Brings `n` children to ready in one fork() call at `concurrency`, measures them, removes them. */
export async function throughput(c: BenchCtx, template: string, n: number, concurrency: number): Promise<ThroughputPoint> {
  c.say(`throughput: ${n} children at concurrency ${concurrency}`);
  const before = availableMemoryMiB();
  const t0 = now();
  const r = await c.engine.fork({ template, count: n, prefix: `n${n}`, concurrency });
  const readyS = (now() - t0) / 1000;
  await settle(2000);
  const after = availableMemoryMiB();
  const stats = c.engine.stats(r.children.map((x) => x.name));
  const cpu = r.children.map((x) => (x.pid ? processCpuMs(x.pid) : undefined)).filter((x): x is number => x !== undefined);
  const m = medianFields(stats.map((s) => ({ rss: s.rssMiB, pss: s.pssMiB, priv: s.privateMiB, shared: s.sharedWithTemplateMiB })));
  const alive = stats.length;
  c.say(`  ${r.children.length}/${n} ready in ${readyS.toFixed(2)} s; ${alive} alive; removing`);
  const r0 = now();
  await removeAll(c.engine, [...r.children.map((x) => x.name), ...r.failed.map((f) => f.name)]);
  const removeS = (now() - r0) / 1000;
  for (const f of r.failed.slice(0, 3)) c.say(`  failed: ${f.name}: ${f.error.message}`);
  return {
    n, concurrency, readyS: round(readyS, 2), clonesPerS: round(r.children.length / readyS, 1), failed: r.failed.length,
    childRssMiB: m.rss, childPssMiB: m.pss, childPrivateMiB: m.priv, childSharedWithTemplateMiB: m.shared,
    hostUsedMiB: before - after, hostUsedPerChildMiB: round((before - after) / Math.max(1, alive)), memAvailableBeforeMiB: before,
    childCpuMs: round(median(cpu)),
    childReadyP50Ms: round(median(r.children.map((x) => x.timings?.readyMs ?? NaN))),
    removeS: round(removeS, 2),
  };
}

/** QEMU processes whose command line mentions `marker` (the bench's home or memory dir). */
export function qemuPidsWith(marker: string): number[] {
  const out: number[] = [];
  for (const p of fs.readdirSync("/proc").filter((x) => /^\d+$/.test(x))) {
    try {
      const cmd = fs.readFileSync(`/proc/${p}/cmdline`, "utf8");
      if (cmd.includes(marker) && cmd.includes("qemu")) out.push(Number(p));
    } catch { /* gone */ }
  }
  return out;
}
