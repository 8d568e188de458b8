// Pools: a fleet of children forked from one template, kept equal to what is declared. A pool is an
// engine object with its own manifest (what was declared, the generation it runs, the children it
// owns). `planPoolChange` says what `applyPool` would do (and what it costs) without doing it;
// `applyPool` reconciles: remove extras → heal dead → add missing (one fork call) → roll outdated
// children in batches of maxUnavailable (one fork call per batch) → rewrite stale metadata.
// A pool recognises its children by recorded ownership (`pool` in the child's manifest), never by
// name alone: it never removes, replaces or renames an object it did not create.
import { createHash } from "node:crypto";
import type { Ctx } from "../context";
import { ForkvmError, messageOf } from "../errors";
import type { PoolManifest, TemplateManifest, VmManifest } from "../state/manifest";
import { nounOf } from "../state/store";
import { statusOf, type VmStatus } from "../state/transitions";
import { PoolArgs, parseArgs, type PoolSpec } from "../spec";
import { memoryStats } from "../stats";
import { availableMemoryMiB } from "../util/meminfo";
import { templateProblems } from "../instance/template-files";
import { forkChildren, type ForkResult } from "./fork";
import { remove, setMetadata, startVm } from "./lifecycle";
import { batchSize, childName, describePlan, indexOf, planPool, type DesiredPool, type LiveChild, type PoolPlan } from "./pool-plan";
import { estimate, type Estimate, type Shape } from "./pool-estimate";

export { PoolArgs, type PoolSpec };

/** The metadata key that marks a pool's children in the guest (and, before pools were engine objects, their owner). */
export const POOL_KEY = "FORKVM_POOL";

export interface PoolChild {
  name: string;
  /** Identifies this instance of the child: a re-forked child keeps its name but gets a new vmId. */
  vmId: string;
  index: number;
  /** `missing`: the pool made it and it is gone (removed by hand); the next apply forks it again. */
  status: VmStatus | "missing";
  mac: string;
  hostname: string;
  template: string;
  generation: string;
  persistent: boolean;
  pid?: number;
  forwards: Array<{ guest: number; host: number; proto: "tcp" | "udp" }>;
  createdAt: string;
}

export interface PoolInfo {
  name: string;
  spec: PoolSpec;
  /** The template generation the pool runs (or rolls to). */
  generation?: string;
  children: PoolChild[];
  /** Children running the pool's generation. */
  ready: number;
  createdAt: string;
  updatedAt: string;
}

export interface PoolChange {
  name: string;
  spec: PoolSpec;
  /** Whether the pool exists yet. */
  exists: boolean;
  plan: PoolPlan;
  /** The plan in lines for people; empty when nothing is to be done. */
  lines: string[];
  /** Whether applying would change anything. */
  changes: boolean;
  estimate: Estimate;
  /** Objects the pool would need the names of but does not own (the apply refuses). */
  clashes: Array<{ name: string; kind: string }>;
}

export interface ApplyResult extends PoolInfo {
  /** What was done, in lines. */
  lines: string[];
  /** What failed; empty when the pool is as declared. */
  errors: string[];
}

/** Hints for a plan whose template does not exist yet (a Pulumi preview of a new fleet). */
export interface PlanHints {
  shape?: Shape;
  /** The template is created later in the same deployment: its absence is not an error. */
  templatePending?: boolean;
}

// ---------------------------------------------------------------------------------------------
// Ownership and the live fleet

const prefixOf = (spec: PoolSpec) => spec.prefix ?? spec.name;

/** Whether the pool named `pool` owns `vm`. */
export function ownedBy(vm: VmManifest, pool: string): boolean {
  return vm.role === "child" && vm.pool?.name === pool;
}

/** The children `pool` owns, by index. */
function ownedChildren(vms: VmManifest[], pool: string): VmManifest[] {
  return vms.filter((v) => ownedBy(v, pool)).sort((a, b) => a.pool!.index - b.pool!.index);
}

/**
 * Children an earlier forkvm made for this pool (before pools were engine objects): children named
 * `<prefix>-<n>` that carry the pool's marker in their metadata and no owner yet.
 */
function adoptable(vms: VmManifest[], spec: PoolSpec): VmManifest[] {
  const prefix = prefixOf(spec);
  return vms.filter((v) => v.role === "child" && !v.pool && v.metadata?.[POOL_KEY] === spec.name && indexOf(prefix, v.name) !== undefined);
}

function liveOf(vm: VmManifest, desired: Record<string, string>): LiveChild {
  return {
    name: vm.name,
    index: vm.pool!.index,
    status: statusOf(vm),
    template: vm.template?.name ?? "",
    generation: vm.template?.generation ?? "",
    persistent: vm.persistent === true,
    mac: vm.mac,
    forwards: vm.forwards,
    metadataStale: !sameRecord(vm.metadata ?? {}, desired),
  };
}

function sameRecord(a: Record<string, string>, b: Record<string, string>): boolean {
  const ka = Object.keys(a);
  return ka.length === Object.keys(b).length && ka.every((k) => a[k] === b[k]);
}

function desiredOf(spec: PoolSpec, generation: string | undefined): DesiredPool {
  return {
    namePrefix: prefixOf(spec),
    size: spec.size,
    template: spec.template,
    generation,
    persistent: spec.persistent,
    macPrefix: spec.macPrefix,
    forwards: spec.forwards,
    maxUnavailable: spec.updatePolicy.maxUnavailable,
  };
}

/** The metadata of child `index`: the user's, placeholders filled in, plus the pool's own FORKVM_* keys. */
export function childMetadata(spec: PoolSpec, index: number, t: { name: string; generation: string }): Record<string, string> {
  const name = childName(prefixOf(spec), index);
  const vars: Record<string, string> = { name, index: String(index), hostname: name, pool: spec.name, template: t.name, generation: t.generation };
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(spec.metadata)) out[k] = v.replace(/\{([A-Za-z_]+)\}/g, (m, p) => vars[p] ?? m);
  return { ...out, FORKVM_POOL: spec.name, FORKVM_INDEX: String(index), FORKVM_NAME: name, FORKVM_TEMPLATE: t.name, FORKVM_GENERATION: t.generation };
}

function vmIdOf(v: VmManifest): string {
  return createHash("sha256").update(`${v.name}\n${v.createdAt}`).digest("hex").slice(0, 12);
}

function childOf(v: VmManifest): PoolChild {
  const status = statusOf(v);
  return {
    name: v.name, vmId: vmIdOf(v), index: v.pool!.index, status, mac: v.mac, hostname: v.hostname,
    template: v.template?.name ?? "", generation: v.template?.generation ?? "", persistent: v.persistent === true,
    pid: status === "running" ? v.pid : undefined, forwards: v.forwards, createdAt: v.createdAt,
  };
}

/** The pool as it is: every child it owns (and those it made that are gone, as `missing`). */
function infoOf(m: PoolManifest, vms: VmManifest[]): PoolInfo {
  const owned = ownedChildren(vms, m.name);
  const children = owned.map(childOf);
  for (const rec of m.children) {
    if (!children.some((c) => c.name === rec.name) && rec.index <= m.spec.size) {
      children.push({ name: rec.name, vmId: "", index: rec.index, status: "missing", mac: "", hostname: rec.name, template: "", generation: "", persistent: m.spec.persistent, forwards: [], createdAt: rec.createdAt });
    }
  }
  children.sort((a, b) => a.index - b.index);
  const ready = children.filter((c) => c.status === "running" && c.generation === m.generation && c.index <= m.spec.size).length;
  return { name: m.name, spec: m.spec, generation: m.generation, children, ready, createdAt: m.createdAt, updatedAt: m.updatedAt };
}

// ---------------------------------------------------------------------------------------------
// Plan

/** Objects holding names the plan would create that this pool does not own. */
function clashesOf(ctx: Ctx, spec: PoolSpec, plan: PoolPlan, vms: VmManifest[]): Array<{ name: string; kind: string }> {
  const out: Array<{ name: string; kind: string }> = [];
  for (const i of plan.add) {
    const name = childName(prefixOf(spec), i);
    const kind = ctx.store.kindOf(name);
    if (!kind) continue;
    const vm = kind === "vms" ? vms.find((v) => v.name === name) : undefined;
    if (vm && ownedBy(vm, spec.name)) continue;
    out.push({ name, kind: nounOf(kind) });
  }
  return out;
}

function estimateOf(spec: PoolSpec, t: TemplateManifest | undefined, shapeHint: Shape | undefined, owned: VmManifest[], vms: VmManifest[]): Estimate {
  const shape: Shape | undefined = t ? { memoryMiB: t.shape.memoryMiB, vcpus: t.shape.vcpus, diskMiB: shapeHint?.diskMiB ?? 0, accel: t.shape.accel } : shapeHint;
  if (!shape) return estimate({ size: spec.size, persistent: spec.persistent, hostFreeMiB: availableMemoryMiB() });
  const sample = t ? vms.filter((v) => v.template?.name === t.name && v.clone !== "full" && statusOf(v) === "running").slice(0, 8) : [];
  const stats = sample.flatMap((v) => memoryStats(v) ?? []);
  const mine = owned.filter((v) => statusOf(v) === "running").flatMap((v) => memoryStats(v) ?? []);
  return estimate({
    size: spec.size,
    persistent: spec.persistent,
    shape,
    measuredPrivateMiB: stats.length ? stats.reduce((s, x) => s + x.privateMiB, 0) / stats.length : undefined,
    hostFreeMiB: availableMemoryMiB(),
    existingMiB: mine.reduce((s, x) => s + x.privateMiB, 0) + (mine.length ? shape.memoryMiB : 0),
  });
}

/** Adoption happens only when the pool has no manifest yet. */
function candidates(vms: VmManifest[], spec: PoolSpec, manifest: PoolManifest | undefined): VmManifest[] {
  const owned = ownedChildren(vms, spec.name);
  if (manifest) return owned;
  return [...owned, ...adoptable(vms, spec).map((v) => ({ ...v, pool: { name: spec.name, index: indexOf(prefixOf(spec), v.name)! } }))];
}

function planFor(ctx: Ctx, spec: PoolSpec, manifest: PoolManifest | undefined, hints: PlanHints = {}) {
  if (manifest && prefixOf(manifest.spec) !== prefixOf(spec)) {
    // Renaming running children is not something a pool does: it would mix names and metadata.
    throw new ForkvmError("INVALID_ARGUMENT", `Cannot change the prefix of pool ${spec.name} from ${prefixOf(manifest.spec)} to ${prefixOf(spec)}: its children are named after it; remove the pool (forkvm pool rm ${spec.name}) or make a new one`, { details: { field: "prefix" } });
  }
  const vms = ctx.store.listVms();
  const t = ctx.store.findTemplate(spec.template);
  if (!t && !hints.templatePending && spec.size > 0) throw new ForkvmError("NOT_FOUND", `Cannot plan pool ${spec.name}: template ${spec.template} does not exist in ${ctx.store.home}`, { details: { field: "template" } });
  const owned = candidates(vms, spec, manifest);
  const live = owned.map((v) => liveOf(v, t ? childMetadata(spec, v.pool!.index, t) : v.metadata ?? {}));
  const desired = desiredOf(spec, t?.generation);
  const plan = planPool(desired, live);
  const lines = describePlan(plan, desired, live);
  if (!t) {
    if (hints.templatePending) lines.push(`template ${spec.template} is created in this deployment`);
  } else {
    const problems = templateProblems(t);
    if (problems.length) lines.push(`warning: template ${t.name} is broken (${problems.join("; ")}): forks will fail`);
  }
  return { vms, t, owned, live, desired, plan, lines };
}

/**
 * What `applyPool` would do now, and what the fleet costs; nothing is changed. Throws
 * INVALID_ARGUMENT (field named), NOT_FOUND (no such template, unless `hints.templatePending`),
 * CONFLICT (the name belongs to a VM or template).
 */
export function planPoolChange(ctx: Ctx, input: PoolArgs, hints: PlanHints = {}): PoolChange {
  const spec = parseArgs(PoolArgs, input, "plan pool");
  const kind = ctx.store.kindOf(spec.name);
  if (kind && kind !== "pools") throw new ForkvmError("CONFLICT", `Cannot plan pool ${spec.name}: the name is taken by a ${nounOf(kind)}`, { details: { field: "name" } });
  const manifest = kind ? ctx.store.findPool(spec.name) : undefined;
  const p = planFor(ctx, spec, manifest, hints);
  const clashes = clashesOf(ctx, spec, p.plan, p.vms);
  for (const c of clashes) p.lines.push(`refused: ${c.name} is a ${c.kind} this pool did not create`);
  const changes = !manifest || p.lines.length > 0 || p.plan.remove.length + p.plan.heal.length + p.plan.add.length + p.plan.batches.length > 0 || specChanged(manifest.spec, spec);
  return { name: spec.name, spec, exists: Boolean(manifest), plan: p.plan, lines: p.lines, changes, estimate: estimateOf(spec, p.t, hints.shape, p.owned, p.vms), clashes };
}

function specChanged(a: PoolSpec, b: PoolSpec): boolean {
  return JSON.stringify(a) !== JSON.stringify(b);
}

// ---------------------------------------------------------------------------------------------
// Apply

/**
 * Brings the pool to what `input` declares, creating it on first use. Returns the pool as it is
 * afterwards with what was done and what failed (a failed child or batch does not throw: the
 * rest is kept and reported in `errors`; a failing roll batch stops the roll). Throws before any
 * change: INVALID_ARGUMENT, NOT_FOUND (template), STATE (template not whole), ALREADY_EXISTS (a
 * name the pool needs belongs to an object it did not create, named), CONFLICT (the pool's lock
 * is held by another apply for too long, or the name is a VM's or template's).
 */
export async function applyPool(ctx: Ctx, input: PoolArgs): Promise<ApplyResult> {
  const spec = parseArgs(PoolArgs, input, "apply pool");
  const { store } = ctx;
  const log = ctx.log.child({ pool: spec.name });
  return store.withLock("pools", spec.name, async () => {
    let manifest = store.findPool(spec.name);
    const t = spec.size > 0 || manifest ? store.getTemplate(spec.template) : store.findTemplate(spec.template);
    if (t && spec.size > 0) {
      const problems = templateProblems(t, { deep: true });
      if (problems.length) throw new ForkvmError("STATE", `Cannot apply pool ${spec.name}: template ${t.name} is not whole: ${problems.join("; ")}`, { details: { problems } });
    }
    const p = planFor(ctx, spec, manifest);
    const clashes = clashesOf(ctx, spec, p.plan, p.vms);
    if (clashes.length) {
      throw new ForkvmError("ALREADY_EXISTS", `Cannot apply pool ${spec.name}: ${clashes.map((c) => `${c.name} is a ${c.kind} this pool did not create`).join("; ")}; remove or rename it, or give the pool another prefix`, { details: { clashes } });
    }
    const now = new Date().toISOString();
    if (!manifest) {
      store.reserve("pools", spec.name);
      manifest = { version: 1, kind: "pool", name: spec.name, createdAt: now, updatedAt: now, spec, generation: t?.generation, children: [] };
      store.writePool(manifest);
      // Adopt, once, the children an earlier forkvm made for this pool (they carry its marker).
      for (const v of p.owned.filter((o) => !store.findVm(o.name)?.pool)) {
        await store.withLock("vms", v.name, async () => {
          const cur = store.findVm(v.name);
          if (cur && !cur.pool) store.writeVm({ ...cur, pool: v.pool });
        });
        log.log("info", `adopted ${v.name}, made for this pool by an earlier forkvm`, { vm: v.name });
      }
    }
    const m: PoolManifest = { ...manifest, spec, generation: t?.generation ?? manifest.generation, updatedAt: now };
    store.writePool(m);
    const res = await reconcile(ctx, m, t, p.plan, p.live);
    const vms = store.listVms();
    m.children = ownedChildren(vms, m.name).map((v) => ({ name: v.name, index: v.pool!.index, createdAt: v.createdAt }));
    m.updatedAt = new Date().toISOString();
    store.writePool(m);
    return { ...infoOf(m, vms), lines: describePlan(p.plan, p.desired, p.live), errors: res.errors };
  });
}

async function reconcile(ctx: Ctx, m: PoolManifest, t: TemplateManifest | undefined, plan: PoolPlan, live: LiveChild[]): Promise<{ errors: string[] }> {
  const { spec } = m;
  const prefix = prefixOf(spec);
  const errors: string[] = [];
  const total = plan.remove.length + plan.heal.length + plan.add.length + plan.batches.flat().length;
  let done = 0;
  const step = (what: string, name: string) => ctx.progress?.({ step: `pool ${what}`, message: name, done: ++done, total });
  const fail = (name: string, err: unknown) => errors.push(`${name}: ${messageOf(err)}`);
  const byName = new Map(live.map((c) => [c.name, c]));

  /** Forks `indexes` afresh (after removing what the pool owns under their names) in one engine call; returns how many failed. */
  const forkIndexes = async (what: string, indexes: number[]): Promise<number> => {
    if (!indexes.length) return 0;
    const names = indexes.map((i) => childName(prefix, i));
    const mine = names.filter((n) => byName.has(n));
    if (mine.length) await remove(ctx, mine, { force: true });
    const r: ForkResult = await forkChildren(ctx, {
      template: t!.name, persistent: spec.persistent, macPrefix: spec.macPrefix, concurrency: spec.concurrency, readyTimeoutS: spec.readyTimeoutS,
      ...(spec.limits ? { limits: spec.limits } : {}),
      ...(spec.egress ? { egress: spec.egress } : {}),
      children: indexes.map((i) => ({
        name: childName(prefix, i),
        // A re-forked child keeps its MAC while it still fits the declared prefix.
        mac: keepMac(byName.get(childName(prefix, i))?.mac, spec.macPrefix),
        metadata: childMetadata(spec, i, t!),
        forwards: spec.forwards.map((f) => ({ guest: f.guest, proto: f.proto, host: f.hostBase ? f.hostBase + i - 1 : 0 })),
      })),
    }, { pool: spec.name, indexOf: (n) => indexOf(prefix, n)! });
    for (const c of r.children) step(what, c.name);
    for (const f of r.failed) { step(what, f.name); fail(f.name, f.error); }
    return r.failed.length;
  };

  // 1. Children beyond size go first: they free memory for the rest.
  if (plan.remove.length) {
    await remove(ctx, plan.remove, { force: true }).catch((err) => fail(plan.remove.join(", "), err));
    for (const n of plan.remove) step("removed", n);
  }
  // 2. Dead children: restarted in place when they are current (their metadata set first, so the
  //    start hands it to the guest), else forked afresh under the same name.
  const refork: number[] = [];
  for (const h of plan.heal) {
    if (h.how === "refork") { refork.push(h.index); continue; }
    try {
      await setMetadata(ctx, h.name, childMetadata(spec, h.index, t!));
      await startVm(ctx, h.name);
      step("healed", h.name);
    } catch (err) {
      step("healed", h.name);
      fail(h.name, err);
    }
  }
  // 3. Reforks of dead children and missing ones: one fork call.
  await forkIndexes("forked", [...refork, ...plan.add].sort((a, b) => a - b));
  // 4. Rolling update: one batch (one fork call) at a time; a batch that fails stops the roll.
  const n = batchSize(spec.updatePolicy.maxUnavailable, spec.size);
  for (const [b, batch] of plan.batches.entries()) {
    ctx.progress?.({ step: "pool roll", message: `batch ${b + 1}/${plan.batches.length} (${batch.join(", ")}) to generation ${t!.generation}` });
    const failed = await forkIndexes("rolled", batch.map((name) => indexOf(prefix, name)!));
    if (failed) {
      errors.push(`rolling update stopped after batch ${b + 1} of ${plan.batches.length} (at most ${n} unavailable at once)`);
      break;
    }
  }
  // 5. New metadata for the running children that were not touched (setMetadata: manifest and guest).
  const moved = new Set([...plan.remove, ...plan.heal.map((h) => h.name), ...plan.batches.flat()]);
  for (const c of live.filter((x) => x.status === "running" && x.metadataStale && x.index <= spec.size && !moved.has(x.name))) {
    await setMetadata(ctx, c.name, childMetadata(spec, c.index, t!)).catch((err) => fail(c.name, err));
  }
  return { errors };
}

function keepMac(mac: string | undefined, prefix: string | undefined): string | undefined {
  if (!mac) return undefined;
  return !prefix || mac.toLowerCase().startsWith(prefix.toLowerCase()) ? mac : undefined;
}

// ---------------------------------------------------------------------------------------------
// Read and remove

/** The pool as it is now. Throws NOT_FOUND. */
export function poolInfo(ctx: Ctx, name: string): PoolInfo {
  return infoOf(ctx.store.getPool(name), ctx.store.listVms());
}

/** The pool, or undefined when there is none. */
export function findPool(ctx: Ctx, name: string): PoolInfo | undefined {
  const m = ctx.store.findPool(name);
  return m && infoOf(m, ctx.store.listVms());
}

export function listPools(ctx: Ctx): PoolInfo[] {
  const vms = ctx.store.listVms();
  return ctx.store.listPools().map((m) => infoOf(m, vms));
}

/**
 * Removes a pool and every child it owns (nothing else); safe to repeat. Returns the names removed
 * (children first, then the pool), or [] when there was no pool.
 */
export async function removePool(ctx: Ctx, name: string): Promise<string[]> {
  const { store } = ctx;
  if (!store.exists("pools", name)) return [];
  return store.withLock("pools", name, async () => {
    const kids = ownedChildren(store.listVms(), name).map((v) => v.name);
    if (kids.length) await remove(ctx, kids, { force: true });
    store.remove("pools", name);
    return [...kids, name];
  });
}
