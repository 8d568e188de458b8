// Admission control: before a fork starts anything, whether the host has room for it — memory
// (MemAvailable against ops/pool-estimate.ts's model of a child), tmpfs and disk for delta disks,
// the host's maximum of VMs, cgroups when limits cap CPU or memory — and the host settings that
// bound forks: `<home>/host.json`, each field overridden by its environment variable.
import * as fs from "node:fs";
import * as path from "node:path";
import type { Ctx } from "../context";
import { ForkvmError, messageOf } from "../errors";
import type { TemplateManifest } from "../state/manifest";
import { statusOf } from "../state/transitions";
import { HOST_SETTINGS_ENV, HostSettings, parseArgs, type Limits } from "../spec";
import { fsInfo } from "../host";
import { memoryStats } from "../stats";
import { availableMemoryMiB } from "../util/meminfo";
import { listQemus } from "../qemu/find";
import { cgroupSupport, controllersFor } from "../qemu/cgroup";
import { estimate } from "./pool-estimate";

export { HostSettings };

/** The host settings file, in the forkvm home. */
export const HOST_SETTINGS_FILE = "host.json";

/**
 * The host settings: defaults (spec.ts HostSettings), then `<home>/host.json`, then the
 * environment (HOST_SETTINGS_ENV). Throws INVALID_ARGUMENT naming the file or variable and field.
 */
export function hostSettings(home: string, env: NodeJS.ProcessEnv = process.env): HostSettings {
  const file = path.join(home, HOST_SETTINGS_FILE);
  let fromFile: Record<string, unknown> = {};
  if (fs.existsSync(file)) {
    try {
      fromFile = JSON.parse(fs.readFileSync(file, "utf8"));
    } catch (err) {
      throw new ForkvmError("INVALID_ARGUMENT", `Cannot read host settings ${file}: ${messageOf(err)}`, { cause: err, details: { field: file } });
    }
    if (!fromFile || typeof fromFile !== "object" || Array.isArray(fromFile)) {
      throw new ForkvmError("INVALID_ARGUMENT", `Cannot read host settings ${file}: not a JSON object`, { details: { field: file } });
    }
  }
  const settings = parseArgs(HostSettings, fromFile, `read host settings ${file}`);
  for (const [key, name] of Object.entries(HOST_SETTINGS_ENV) as Array<[keyof HostSettings, string]>) {
    const raw = env[name];
    if (raw === undefined || raw === "") continue;
    const r = /^\s*\d+\s*$/.test(raw) ? HostSettings.shape[key].safeParse(Number(raw)) : undefined;
    if (!r?.success) {
      throw new ForkvmError("INVALID_ARGUMENT", `Cannot read host settings: ${name}=${raw}: ${r ? r.error.issues[0]?.message : "must be an integer"}`, { details: { field: name } });
    }
    settings[key] = r.data as number;
  }
  return settings;
}

/** What a fork asks of the host. */
export interface ForkDemand {
  template: Pick<TemplateManifest, "name" | "shape" | "diskPath">;
  count: number;
  persistent: boolean;
  clone: "linked" | "full";
  limits?: Limits;
  /** Mean private MiB of this template's running children, when some run (else the model's). */
  measuredPrivateMiB?: number;
  /** MiB a full clone's disk copy takes (the template disk's allocated size). */
  baseDiskMiB?: number;
}

/** What the host has. */
export interface HostRoom {
  memAvailableMiB: number;
  memDir: { path: string; freeMiB: number };
  stateDir: { path: string; freeMiB: number };
  /** forkvm QEMUs running on this host now (every home). */
  runningVms: number;
  /** Why cgroups cannot cap what the limits ask, if they cannot. */
  cgroupsMissing?: string;
}

export interface Shortage {
  resource: "memory" | "tmpfs" | "disk" | "vms" | "cgroups";
  need?: number;
  available?: number;
  text: string;
}

/** What the fork needs, in MiB: memory (private pages + tmpfs files), tmpfs, state-dir disk. */
export function demandOf(d: ForkDemand): { perChildMiB: number; memoryMiB: number; tmpfsMiB: number; diskMiB: number; basis: string } {
  const s = d.template.shape;
  const e = estimate({
    size: d.count, persistent: d.persistent, measuredPrivateMiB: d.measuredPrivateMiB,
    shape: { memoryMiB: s.memoryMiB, vcpus: s.vcpus, diskMiB: 0, accel: s.accel },
  });
  const onTmpfs = !d.persistent;
  if (d.clone === "full") {
    // Own memory copy (in tmpfs) + QEMU, and a copy of the template's disk.
    const disk = d.template.diskPath ? d.baseDiskMiB ?? 0 : 0;
    const perChild = e.memory.asFullVmsMiB / Math.max(1, d.count) + (onTmpfs ? disk : 0);
    return { perChildMiB: perChild, memoryMiB: perChild * d.count, tmpfsMiB: (s.memoryMiB + (onTmpfs ? disk : 0)) * d.count, diskMiB: onTmpfs ? 0 : disk * d.count, basis: "model" };
  }
  // The template's memory is in tmpfs already: only what each child adds is new.
  const delta = d.template.diskPath ? e.disk.perChildMiB : 0;
  const perChild = e.memory.privatePerChildMiB + (onTmpfs ? delta : 0);
  return { perChildMiB: perChild, memoryMiB: perChild * d.count, tmpfsMiB: onTmpfs ? delta * d.count : 0, diskMiB: onTmpfs ? 0 : delta * d.count, basis: e.basis };
}

/** "15.2 GiB", "640 MiB", "0.4 MiB". */
export function size(mib: number): string {
  if (mib >= 1024) return `${(mib / 1024).toFixed(1)} GiB`;
  return mib >= 10 ? `${Math.round(mib)} MiB` : `${Math.round(mib * 10) / 10} MiB`;
}

/** Every way the host falls short of the demand (empty: admitted). Pure. */
export function shortages(d: ForkDemand, room: HostRoom, settings: HostSettings): Shortage[] {
  const out: Shortage[] = [];
  const need = demandOf(d);
  const reserve = settings.memoryReserveMiB;
  if (need.memoryMiB + reserve > room.memAvailableMiB) {
    out.push({
      resource: "memory", need: need.memoryMiB, available: room.memAvailableMiB,
      text: `needs ~${size(need.memoryMiB)} of memory (${d.count} × ~${size(need.perChildMiB)}), ${size(room.memAvailableMiB)} available${reserve ? ` of which ${size(reserve)} stay for the host` : ""}`,
    });
  }
  if (need.tmpfsMiB > room.memDir.freeMiB) {
    out.push({ resource: "tmpfs", need: need.tmpfsMiB, available: room.memDir.freeMiB, text: `needs ~${size(need.tmpfsMiB)} of tmpfs in ${room.memDir.path}, ${size(room.memDir.freeMiB)} free` });
  }
  if (need.diskMiB > room.stateDir.freeMiB) {
    out.push({ resource: "disk", need: need.diskMiB, available: room.stateDir.freeMiB, text: `needs ~${size(need.diskMiB)} of disk in ${room.stateDir.path}, ${size(room.stateDir.freeMiB)} free` });
  }
  if (room.runningVms + d.count > settings.maxVms) {
    out.push({
      resource: "vms", need: d.count, available: Math.max(0, settings.maxVms - room.runningVms),
      text: `${d.count} more VMs would pass the host's maximum: it runs ${room.runningVms} forkvm VMs of at most ${settings.maxVms} (maxVms in ${HOST_SETTINGS_FILE}, or ${HOST_SETTINGS_ENV.maxVms})`,
    });
  }
  if (room.cgroupsMissing) out.push({ resource: "cgroups", text: room.cgroupsMissing });
  return out;
}

/** What the host has now, for a demand (reads /proc, statfs; cgroups only when the limits need them). */
export function hostRoom(ctx: Ctx, d: ForkDemand): HostRoom {
  const { store } = ctx;
  store.init();
  const needs = controllersFor(d.limits);
  const cg = needs.length ? cgroupSupport(needs) : {};
  const fields = needs.map((c) => (c === "cpu" ? "limits.cpuPercent" : "limits.memoryMiB")).join(" and ");
  return {
    memAvailableMiB: availableMemoryMiB(),
    memDir: { path: store.memDir, freeMiB: fsInfo(store.memDir).freeMiB },
    stateDir: { path: store.home, freeMiB: fsInfo(store.home).freeMiB },
    runningVms: listQemus().length,
    cgroupsMissing: needs.length && !cg.layout ? `${fields} need${needs.length > 1 ? "" : "s"} cgroups: ${cg.reason}` : undefined,
  };
}

/** Mean private MiB of up to 8 running linked children of template `name`, if any run. */
function measuredPrivateMiB(ctx: Ctx, name: string): number | undefined {
  const sample = ctx.store.listVms().filter((v) => v.template?.name === name && v.clone !== "full" && statusOf(v) === "running").slice(0, 8);
  const stats = sample.flatMap((v) => memoryStats(v) ?? []);
  return stats.length ? stats.reduce((s, x) => s + x.privateMiB, 0) / stats.length : undefined;
}

function allocatedMiB(file: string | undefined): number {
  try { return file ? (fs.statSync(file).blocks * 512) / 1048576 : 0; } catch { return 0; }
}

/**
 * Refuses a fork the host has no room for, before anything is reserved or started: throws HOST
 * naming every shortage and by how much ("Cannot fork 500 children of web-t: needs ~15.2 GiB of
 * memory (500 × ~31 MiB), 9.8 GiB available ..."; details.shortages), INVALID_ARGUMENT for bad
 * host settings. Returns the settings it used. A check, not a reservation: two forks admitted at
 * once can still overcommit together.
 */
export function admitFork(ctx: Ctx, d: Omit<ForkDemand, "measuredPrivateMiB" | "baseDiskMiB">): HostSettings {
  const settings = hostSettings(ctx.store.home);
  const demand: ForkDemand = {
    ...d,
    measuredPrivateMiB: d.clone === "linked" ? measuredPrivateMiB(ctx, d.template.name) : undefined,
    baseDiskMiB: d.clone === "full" ? allocatedMiB(d.template.diskPath) : undefined,
  };
  const short = shortages(demand, hostRoom(ctx, demand), settings);
  if (short.length) {
    throw new ForkvmError("HOST", `Cannot fork ${d.count} ${d.count === 1 ? "child" : "children"} of ${d.template.name}: ${short.map((s) => s.text).join("; ")}`, {
      details: { shortages: short, ...(short.some((s) => s.resource === "cgroups") ? { field: "limits" } : {}) },
    });
  }
  return settings;
}
