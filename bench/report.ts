// The benchmark's result: one JSON object (flat headline keys the team tracks, details beside
// them), the targets of issue 4 checked against it, and the text table printed at the end.
import type { ForkSample, HostInfo, TemplateRun, ThroughputPoint } from "./measure";
import { median, medianFields, round, summarize, type Summary } from "./stats";

export interface Raw {
  mode: "quick" | "full";
  host: HostInfo;
  guestMemoryMiB: number;
  concurrency: number;
  coldBootMs: number[];
  fullClones: ForkSample[];
  forks: ForkSample[];
  throughput: ThroughputPoint[];
  templates: TemplateRun[];
  memoryScaling: Array<{ memoryMiB: number; forks: ForkSample[] }>;
  durationS: number;
  /** The host's 1-minute load average at the start and the end (other work skews wall times). */
  loadAverage?: { start: number; end: number };
}

export interface Target {
  name: string;
  target: string;
  value: number | null;
  unit: string;
  met: boolean | null;
}

export function buildResult(raw: Raw, date = new Date()) {
  const ready = raw.forks.map((s) => s.readyMs);
  const running = raw.forks.map((s) => s.runningMs);
  const rs: Summary = summarize(running);
  const ys: Summary = summarize(ready);
  const coldBootReadyMs = round(median(raw.coldBootMs));
  const fullCloneReadyMs = round(median(raw.fullClones.map((s) => s.readyMs)));
  const largest = [...raw.throughput].sort((a, b) => b.n - a.n)[0];
  const at = (n: number) => raw.throughput.find((p) => p.n === n);
  const t256 = raw.templates.find((t) => t.memoryMiB === raw.guestMemoryMiB);
  const childPssMiB = largest?.childPssMiB ?? null;
  const fit = childPssMiB && largest ? Math.floor(largest.memAvailableBeforeMiB / childPssMiB) : null;
  const maxAlive = Math.max(0, ...raw.throughput.filter((p) => p.failed === 0).map((p) => p.n));
  const result = {
    version: 1,
    date: date.toISOString(),
    mode: raw.mode,
    host: raw.host,
    accel: raw.host.accel,
    qemu: raw.host.qemu,
    guestMemoryMiB: raw.guestMemoryMiB,
    concurrency: raw.concurrency,
    coldBootReadyMs,
    fullCloneReadyMs,
    forkRunningP50Ms: rs.p50,
    forkRunningP90Ms: rs.p90,
    forkRunningP99Ms: rs.p99,
    forkReadyP50Ms: ys.p50,
    forkReadyP90Ms: ys.p90,
    forkReadyP99Ms: ys.p99,
    speedupVsColdBoot: round(coldBootReadyMs / ys.p50),
    speedupVsFullClone: round(fullCloneReadyMs / ys.p50),
    children100ReadyS: at(100)?.readyS ?? null,
    clonesPerS: largest?.clonesPerS ?? null,
    childPssMiB,
    childRssMiB: largest?.childRssMiB ?? null,
    childPrivateMiB: largest?.childPrivateMiB ?? null,
    hostMemoryPerChildMiB: largest?.hostUsedPerChildMiB ?? null,
    childrenFitEstimate: fit,
    childrenFitBasis: "host MemAvailable before the largest batch / median child PSS (extrapolated, not measured)",
    maxChildrenAliveMeasured: maxAlive,
    runningSourceDowntimeMs: t256?.runningDowntimeMs ?? null,
    freezeMs: t256?.freezeMs ?? null,
    coldBoot: { samplesMs: raw.coldBootMs, basis: "createParent from an existing disk image (no mkfs) to agent-ready, wall clock" },
    fullClone: { readyMs: summarize(raw.fullClones.map((s) => s.readyMs)), phasesP50: medianFields(raw.fullClones.map((s) => s.phases)) },
    fork: {
      running: rs, ready: ys, phasesP50: medianFields(raw.forks.map((s) => s.phases)),
      childCpuToReadyP50Ms: round(median(raw.forks.map((s) => s.cpuMs ?? NaN).filter((x) => !Number.isNaN(x)))),
      samples: raw.forks.map((s) => [s.runningMs, s.readyMs]),
    },
    loadAverage: raw.loadAverage,
    throughput: raw.throughput,
    templates: raw.templates,
    memoryScaling: raw.memoryScaling.map((m) => ({
      memoryMiB: m.memoryMiB, n: m.forks.length,
      forkRunningP50Ms: round(median(m.forks.map((s) => s.runningMs))), forkReadyP50Ms: round(median(m.forks.map((s) => s.readyMs))),
    })),
    durationS: round(raw.durationS),
    targets: [] as Target[],
  };
  result.targets = targets(result);
  return result;
}

export type BenchResult = ReturnType<typeof buildResult>;

function target(name: string, target: string, value: number | null | undefined, unit: string, ok: (v: number) => boolean): Target {
  const v = value === undefined || value === null || Number.isNaN(value) ? null : value;
  return { name, target, value: v, unit, met: v === null ? null : ok(v) };
}

/** The targets of issue 4 (2-core TCG host, 256 MiB guest). */
export function targets(r: Omit<BenchResult, "targets">): Target[] {
  return [
    target("fork-to-ready p50", "≤ 150 ms", r.forkReadyP50Ms, "ms", (v) => v <= 150),
    target("100 children ready", "≤ 10 s", r.children100ReadyS, "s", (v) => v <= 10),
    target("per-child PSS", "≤ 40 MiB", r.childPssMiB, "MiB", (v) => v <= 40),
    target("children alive at once (measured)", "≥ 200", r.maxChildrenAliveMeasured, "", (v) => v >= 200),
    target("fork vs cold boot", "≥ 50×", r.speedupVsColdBoot, "×", (v) => v >= 50),
    target("running-mode downtime", "≤ 100 ms", r.runningSourceDowntimeMs, "ms", (v) => v <= 100),
  ];
}

/** A plain-text table with a header row and right-aligned numbers. */
export function textTable(head: string[], rows: Array<Array<string | number | null | undefined>>): string {
  const cells = rows.map((r) => r.map((c) => (c === null || c === undefined ? "-" : String(c))));
  const widths = head.map((h, i) => Math.max(h.length, ...cells.map((r) => (r[i] ?? "").length)));
  const line = (r: string[]) => r.map((c, i) => (/^[-+]?[\d.]+( ?[a-z×%/]+)?$/i.test(c) && i > 0 ? c.padStart(widths[i]) : c.padEnd(widths[i]))).join("  ").trimEnd();
  return [line(head), widths.map((w) => "-".repeat(w)).join("  "), ...cells.map(line)].join("\n");
}

const ms = (v: number | null | undefined) => (v === null || v === undefined || Number.isNaN(v) ? "-" : v >= 10_000 ? `${round(v / 1000, 1)} s` : `${round(v)} ms`);

export function renderText(r: BenchResult): string {
  const h = r.host;
  const out: string[] = [];
  out.push(`forkvm bench (${r.mode}) ${r.date}`);
  out.push(`host ${h.hostname}: ${h.cores} cores (${h.cpuModel}), ${h.memoryGiB} GiB, Linux ${h.kernel}`);
  out.push(`QEMU ${h.qemu} (${h.machine}), accelerator ${h.accel}: ${h.accelReason}`);
  out.push(`guest ${r.guestMemoryMiB} MiB, default image; throughput at concurrency ${r.concurrency}; run took ${r.durationS} s`);
  out.push("");
  out.push(textTable(["latency to agent-ready", "p50", "p90", "p99", "n"], [
    ["cold boot", ms(r.coldBootReadyMs), "-", "-", r.coldBoot.samplesMs.length],
    ["full clone (copy memory + disk, restore)", ms(r.fullCloneReadyMs), ms(r.fullClone.readyMs.p90), ms(r.fullClone.readyMs.p99), r.fullClone.readyMs.n],
    ["instant clone → running", ms(r.forkRunningP50Ms), ms(r.forkRunningP90Ms), ms(r.forkRunningP99Ms), r.fork.running.n],
    ["instant clone → agent-ready", ms(r.forkReadyP50Ms), ms(r.forkReadyP90Ms), ms(r.forkReadyP99Ms), r.fork.ready.n],
  ]));
  out.push(`speed-up of instant clone (ready p50): ${r.speedupVsColdBoot}× vs cold boot, ${r.speedupVsFullClone}× vs full clone`);
  out.push(`instant clone phases (p50, ms from the start of the child's fork): ${Object.entries(r.fork.phasesP50).map(([k, v]) => `${k} ${v}`).join(", ")}`);
  out.push(`CPU a child's QEMU used from start to ready (p50): ${ms(r.fork.childCpuToReadyP50Ms)}; host load average ${r.loadAverage ? `${r.loadAverage.start} at start, ${r.loadAverage.end} at end` : "-"}`);
  out.push("");
  out.push(textTable(["N children", "to ready", "clones/s", "failed", "child CPU", "child RSS", "child PSS", "child private", "host used", "per child", "remove"],
    r.throughput.map((p) => [p.n, `${p.readyS} s`, p.clonesPerS, p.failed, ms(p.childCpuMs), `${p.childRssMiB} MiB`, `${p.childPssMiB} MiB`, `${p.childPrivateMiB} MiB`, `${p.hostUsedMiB} MiB`, `${p.hostUsedPerChildMiB} MiB`, `${p.removeS} s`])));
  out.push(`children of a ${r.guestMemoryMiB} MiB template that fit in free memory: ~${r.childrenFitEstimate ?? "-"} (${r.childrenFitBasis})`);
  out.push("");
  out.push(textTable(["guest memory", "parent cold boot", "quiesce", "frozen: freeze", "running: downtime", "(QEMU's)", "capture", "build", "fork → running p50", "fork → ready p50"],
    r.templates.map((t) => {
      const m = r.memoryScaling.find((x) => x.memoryMiB === t.memoryMiB);
      return [`${t.memoryMiB} MiB`, ms(t.parentBootMs), ms(t.quiesceMs), ms(t.freezeMs), ms(t.runningDowntimeMs), ms(t.runningQemuDowntimeMs), ms(t.runningCaptureMs), ms(t.runningBuildMs), ms(m?.forkRunningP50Ms), ms(m?.forkReadyP50Ms)];
    })));
  out.push("");
  out.push(textTable(["target", "goal", "measured", "met"], r.targets.map((t) => [t.name, t.target, t.value === null ? "not measured" : `${t.value}${t.unit ? ` ${t.unit}` : ""}`, t.met === null ? "-" : t.met ? "yes" : "NO"])));
  return out.join("\n");
}
