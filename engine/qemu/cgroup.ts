// cgroups that cap one QEMU's CPU and memory: where forkvm's live (cgroup v2 when it has the cpu
// and memory controllers, else the v1 cpu and memory hierarchies), one per QEMU instance named
// by its token, written before QEMU starts (the spawner moves it in) and removed once it is gone.
import * as fs from "node:fs";
import * as path from "node:path";
import { ForkvmError, messageOf } from "../errors";
import type { ResourceLimits } from "./argv";

export type Controller = "cpu" | "memory";

/** Where forkvm's cgroups go: per controller, the directory its per-QEMU cgroups are made in. */
export interface CgroupLayout {
  version: 1 | 2;
  bases: Partial<Record<Controller, string>>;
}

/** The CPU period forkvm writes with every CPU cap (the kernel's default, 100 ms). */
export const CPU_PERIOD_US = 100_000;
/** A per-QEMU cgroup left empty for this long is removed by the next spawn (a QEMU that died alone). */
const SWEEP_AGE_MS = 60_000;
/** The directory under the chosen parent that holds forkvm's cgroups. */
const FORKVM_DIR = "forkvm";

interface Mount { root: string; mountPoint: string; fstype: string; superOptions: string[] }

/** /proc/self/mountinfo, the fields a cgroup lookup needs. */
export function parseMountinfo(text: string): Mount[] {
  const out: Mount[] = [];
  for (const line of text.split("\n")) {
    const f = line.split(" ");
    const dash = f.indexOf("-");
    if (dash < 6 || f.length < dash + 4) continue;
    const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o) => String.fromCharCode(parseInt(o, 8)));
    out.push({ root: unescape(f[3]), mountPoint: unescape(f[4]), fstype: f[dash + 1], superOptions: f[dash + 3].split(",") });
  }
  return out;
}

/** /proc/self/cgroup: the v2 path (line "0::/path") and the v1 path of each controller. */
export function parseProcCgroup(text: string): { v2?: string; v1: Record<string, string> } {
  const v1: Record<string, string> = {};
  let v2: string | undefined;
  for (const line of text.split("\n")) {
    const m = line.match(/^(\d+):([^:]*):(.*)$/);
    if (!m) continue;
    if (m[1] === "0" && m[2] === "") v2 = m[3];
    else for (const c of m[2].split(",")) if (c) v1[c] = m[3];
  }
  return { v2, v1 };
}

/** The directory of cgroup `cgPath` in a mount of its hierarchy (a mount may show only a subtree). */
function dirIn(mount: Mount, cgPath: string): string | undefined {
  const rel = mount.root === "/" ? cgPath : cgPath === mount.root || cgPath.startsWith(`${mount.root}/`) ? cgPath.slice(mount.root.length) || "/" : undefined;
  return rel === undefined ? undefined : path.join(mount.mountPoint, rel);
}

const read = (f: string) => { try { return fs.readFileSync(f, "utf8"); } catch { return undefined; } };

/**
 * Where forkvm's cgroups go on this host, for the controllers `needs`; a reason when nowhere.
 * v2: `<parent of this process's cgroup>/forkvm` (v2 lets a cgroup with processes of its own hand
 * no controllers to children, so forkvm's sit next to the engine's, not under it; at the root:
 * `/forkvm`). v1: `<this process's cgroup>/forkvm` in each hierarchy (nested, so whatever caps
 * the caller also caps its VMs). Pure apart from reading cgroup.controllers.
 */
export function findLayout(needs: Controller[], mountinfo: string, procCgroup: string): { layout?: CgroupLayout; reason?: string } {
  const mounts = parseMountinfo(mountinfo);
  const own = parseProcCgroup(procCgroup);
  const v2 = mounts.find((m) => m.fstype === "cgroup2");
  let v2Reason = "no cgroup2 file system is mounted";
  if (v2 && own.v2 !== undefined) {
    const parent = own.v2 === "/" ? "/" : path.posix.dirname(own.v2);
    const parentDir = dirIn(v2, parent);
    const available = parentDir ? (read(path.join(parentDir, "cgroup.controllers")) ?? "").trim().split(/\s+/) : [];
    const missing = needs.filter((c) => !available.includes(c));
    if (parentDir && !missing.length) {
      const base = path.join(parentDir, FORKVM_DIR);
      return { layout: { version: 2, bases: Object.fromEntries(needs.map((c) => [c, base])) } };
    }
    v2Reason = `cgroup v2 at ${v2.mountPoint} lacks the ${missing.join(" and ")} controller${missing.length > 1 ? "s" : ""}`;
  }
  const bases: Partial<Record<Controller, string>> = {};
  for (const c of needs) {
    const m = mounts.find((x) => x.fstype === "cgroup" && x.superOptions.includes(c));
    const own1 = own.v1[c];
    const dir = m && own1 !== undefined ? dirIn(m, own1) : undefined;
    if (!dir) return { reason: `${v2Reason}, and no cgroup v1 ${c} hierarchy holds this process` };
    bases[c] = path.join(dir, FORKVM_DIR);
  }
  return { layout: { version: 1, bases } };
}

/** The controllers a VM's limits need. */
export function controllersFor(limits: ResourceLimits | undefined): Controller[] {
  const out: Controller[] = [];
  if (limits?.cpuPercent) out.push("cpu");
  if (limits?.memoryMiB) out.push("memory");
  return out;
}

const found = new Map<string, { layout?: CgroupLayout; reason?: string }>();
const prepared = new Map<string, { layout?: CgroupLayout; reason?: string }>();

/** findLayout for this process, cached (nothing is created). */
function layoutFor(needs: Controller[]): { layout?: CgroupLayout; reason?: string } {
  const key = [...needs].sort().join(",");
  let r = found.get(key);
  if (!r) found.set(key, (r = findLayout(needs, read("/proc/self/mountinfo") ?? "", read("/proc/self/cgroup") ?? "")));
  return r;
}

/**
 * Whether this host lets forkvm make cgroups with `needs` (and where): found, created and
 * writable. Cached per process. Never throws.
 */
export function cgroupSupport(needs: Controller[]): { layout?: CgroupLayout; reason?: string } {
  const key = [...needs].sort().join(",");
  const hit = prepared.get(key);
  if (hit) return hit;
  let r = layoutFor(needs);
  if (r.layout) {
    try {
      for (const base of new Set(Object.values(r.layout.bases))) prepareBase(r.layout.version, base, needs);
    } catch (err) {
      r = { reason: `cannot create forkvm's cgroups: ${messageOf(err)}` };
    }
  }
  prepared.set(key, r);
  return r;
}

function prepareBase(version: 1 | 2, base: string, needs: Controller[]): void {
  if (version === 2) enableControllers(path.dirname(base), needs);
  fs.mkdirSync(base, { recursive: true });
  if (version === 2) enableControllers(base, needs);
  fs.accessSync(base, fs.constants.W_OK);
}

/** v2: hands `needs` to the children of `dir` (cgroup.subtree_control), where not done yet. */
function enableControllers(dir: string, needs: Controller[]): void {
  const file = path.join(dir, "cgroup.subtree_control");
  const on = (read(file) ?? "").trim().split(/\s+/);
  const missing = needs.filter((c) => !on.includes(c));
  if (missing.length) fs.writeFileSync(file, missing.map((c) => `+${c}`).join(" "));
}

/** The cgroup directories of one QEMU instance (one per hierarchy). */
export function cgroupDirs(layout: CgroupLayout, token: string): string[] {
  return [...new Set(Object.values(layout.bases))].map((b) => path.join(b, token));
}

/** The files a limit is written to, with their contents. */
export function limitFiles(layout: CgroupLayout, token: string, limits: ResourceLimits): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  const cpu = layout.bases.cpu && path.join(layout.bases.cpu, token);
  const mem = layout.bases.memory && path.join(layout.bases.memory, token);
  const quota = limits.cpuPercent ? Math.max(1000, Math.round((limits.cpuPercent / 100) * CPU_PERIOD_US)) : undefined;
  const bytes = limits.memoryMiB ? String(limits.memoryMiB * 1048576) : undefined;
  if (layout.version === 2) {
    if (cpu && quota) out.push([path.join(cpu, "cpu.max"), `${quota} ${CPU_PERIOD_US}`]);
    if (mem && bytes) out.push([path.join(mem, "memory.max"), bytes]);
  } else {
    if (cpu && quota) out.push([path.join(cpu, "cpu.cfs_period_us"), String(CPU_PERIOD_US)], [path.join(cpu, "cpu.cfs_quota_us"), String(quota)]);
    if (mem && bytes) out.push([path.join(mem, "memory.limit_in_bytes"), bytes]);
  }
  return out;
}

/**
 * Makes the cgroup(s) of the QEMU instance `token` with `limits` and returns the `cgroup.procs`
 * files the new process must join (none when the limits need no cgroup). Removes cgroups of
 * QEMUs that died alone first. Throws HOST when the host has no usable cgroups.
 */
export function createCgroup(token: string, limits: ResourceLimits | undefined): string[] {
  const needs = controllersFor(limits);
  if (!needs.length) return [];
  const { layout, reason } = cgroupSupport(needs);
  if (!layout) throw new ForkvmError("HOST", `Cannot cap ${needs.map((c) => (c === "cpu" ? "limits.cpuPercent" : "limits.memoryMiB")).join(" and ")}: ${reason}`, { details: { field: "limits" } });
  sweep(layout);
  const dirs = cgroupDirs(layout, token);
  try {
    for (const d of dirs) fs.mkdirSync(d, { recursive: true });
    for (const [file, value] of limitFiles(layout, token, limits!)) fs.writeFileSync(file, value);
  } catch (err) {
    for (const d of dirs) try { fs.rmdirSync(d); } catch { /* not made */ }
    throw new ForkvmError("HOST", `Cannot create the cgroup of QEMU ${token}: ${messageOf(err)}`, { cause: err });
  }
  return dirs.map((d) => path.join(d, "cgroup.procs"));
}

/** Moves a running process into cgroups (Node's direct spawn, where no spawner shell moved it first). */
export function joinCgroup(procs: string[], pid: number): void {
  for (const f of procs) fs.writeFileSync(f, String(pid));
}

/** Removes the cgroups of QEMU instance `token`, if any and empty; safe to repeat. False when one is still in use. */
export function removeCgroup(token: string): boolean {
  let left = false;
  for (const c of ["cpu", "memory"] as const) {
    const { layout } = layoutFor([c]);
    for (const d of layout ? cgroupDirs(layout, token) : []) {
      try { fs.rmdirSync(d); } catch (err) { if ((err as NodeJS.ErrnoException).code !== "ENOENT") left = true; }
    }
  }
  return !left;
}

/** Removes per-QEMU cgroups that have been empty for a while (their QEMU died without forkvm). */
function sweep(layout: CgroupLayout): void {
  for (const base of new Set(Object.values(layout.bases))) {
    let names: string[] = [];
    try { names = fs.readdirSync(base); } catch { continue; }
    for (const n of names) {
      const d = path.join(base, n);
      try {
        const st = fs.statSync(d);
        if (!st.isDirectory() || Date.now() - st.mtimeMs < SWEEP_AGE_MS) continue;
        if ((read(path.join(d, "cgroup.procs")) ?? "x").trim() === "") fs.rmdirSync(d);
      } catch { /* gone, or in use */ }
    }
  }
}
