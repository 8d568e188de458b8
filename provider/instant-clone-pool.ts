// The InstantClonePool provider: keeps a fleet of children named <namePrefix>-<n> equal to what is
// declared. check computes the cost estimate and the plan (so preview shows both); create and
// update reconcile (remove extras → heal dead → add missing → roll outdated children in batches of
// maxUnavailable); read reports every child's live status; delete removes them all.
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import type { Engine, TemplateInfo, VmInfo } from "../engine";
import { InstantClonePoolInputs, METADATA_PLACEHOLDERS, type Child, type InstantClonePoolOutputs } from "../schema/instant-clone-pool";
import type { Shape } from "../schema/common";
import { estimate } from "./estimate";
import { changedKeys, generateName, isUnknown, openEngine, parseInputs, PartialFailure, same, type CheckFailure } from "./common";
import { batchSize, childName, describePlan, indexOf, planPool, type DesiredPool, type LiveChild, type PoolPlan } from "./pool-plan";
import { labelOf, reporter, type Reporter } from "./report";
import { clean, hostFreeMiB, mapLimit } from "./util";

type Props = Record<string, any>;

/** Engine metadata keys the pool sets on every child (and hands to the guest); users cannot set FORKVM_*. */
export const POOL_KEY = "FORKVM_POOL";
const RESERVED_PREFIX = "FORKVM_";
const REPLACE_KEYS = ["namePrefix"] as const;
const UPDATE_KEYS = ["template", "size", "persistent", "macPrefix", "metadata", "forwards", "updatePolicy", "concurrency", "readyTimeoutS"] as const;
/** Room left in a 63-character name for "-<n>" with n up to 10000. */
const MAX_PREFIX = 57;

// ---------------------------------------------------------------------------------------------
// The live fleet

/** The template, or undefined when it is not there or not known yet (preview). */
function liveTemplate(engine: Engine, name: string): TemplateInfo | undefined {
  return isUnknown(name) ? undefined : engine.findTemplate(name);
}

/** The pool's children in the engine: tagged with the pool, or named in the last outputs. */
export function poolChildren(engine: Engine, prefix: string, known: string[] = []): VmInfo[] {
  return engine
    .listVms()
    .filter((v) => v.role === "child" && indexOf(prefix, v.name) !== undefined && (v.metadata?.[POOL_KEY] === prefix || known.includes(v.name)))
    .sort((a, b) => indexOf(prefix, a.name)! - indexOf(prefix, b.name)!);
}

function knownNames(props: Props): string[] {
  return Array.isArray(props.children) ? props.children.map((c: Child) => c.name) : [];
}

function liveOf(v: VmInfo, prefix: string): LiveChild {
  return {
    name: v.name,
    index: indexOf(prefix, v.name)!,
    status: v.status,
    template: v.template?.name ?? "",
    generation: v.template?.generation ?? "",
    persistent: v.persistent === true,
    mac: v.mac,
    forwards: v.forwards,
  };
}

function desiredOf(prefix: string, inputs: Props, generation?: string): DesiredPool {
  return {
    namePrefix: prefix,
    size: inputs.size,
    template: inputs.template,
    generation,
    persistent: inputs.persistent,
    macPrefix: inputs.macPrefix,
    forwards: inputs.forwards,
    maxUnavailable: inputs.updatePolicy?.maxUnavailable ?? 1,
  };
}

function vmIdOf(v: VmInfo): string {
  return createHash("sha256").update(`${v.name}\n${v.createdAt}`).digest("hex").slice(0, 12);
}

export function childOf(v: VmInfo, prefix: string): Child {
  return clean({
    name: v.name,
    vmId: vmIdOf(v),
    index: indexOf(prefix, v.name)!,
    mac: v.mac,
    hostname: v.hostname,
    template: v.template?.name ?? "",
    generation: v.template?.generation ?? "",
    persistent: v.persistent === true,
    pid: v.status === "running" ? v.pid : undefined,
    status: v.status,
    forwards: v.forwards,
    createdAt: v.createdAt,
  });
}

/** The outputs: the checked inputs plus every child as it is now; children gone since `previous` show as missing. */
export function outputsOf(engine: Engine, prefix: string, inputs: Props, previous: Props = {}): InstantClonePoolOutputs {
  const t = liveTemplate(engine, inputs.template);
  const live = poolChildren(engine, prefix, knownNames(previous)).map((v) => childOf(v, prefix));
  const missing = (Array.isArray(previous.children) ? (previous.children as Child[]) : [])
    .filter((c) => c.index <= inputs.size && !live.some((l) => l.name === c.name))
    .map((c) => ({ ...c, status: "missing" as const, pid: undefined }));
  const children = [...live, ...missing].sort((a, b) => a.index - b.index);
  const generation = t?.generation ?? previous.generation ?? "";
  return clean({
    ...inputs,
    namePrefix: prefix,
    plan: [],
    children,
    generation,
    ready: children.filter((c) => c.status === "running" && c.generation === generation && c.index <= inputs.size).length,
  }) as unknown as InstantClonePoolOutputs;
}

// ---------------------------------------------------------------------------------------------
// check: validation, estimate, plan

function validateMore(inputs: Props): CheckFailure[] {
  const failures: CheckFailure[] = [];
  const size = typeof inputs.size === "number" ? inputs.size : 0;
  if (typeof inputs.namePrefix === "string" && !isUnknown(inputs.namePrefix) && `${inputs.namePrefix}-${size}`.length > 63) {
    failures.push({ property: "namePrefix", reason: `too long: child names "${inputs.namePrefix}-${size}" must fit in 63 characters` });
  }
  for (const [k, v] of Object.entries<string>(inputs.metadata ?? {})) {
    if (k.startsWith(RESERVED_PREFIX)) failures.push({ property: `metadata.${k}`, reason: `keys starting with ${RESERVED_PREFIX} are reserved for the pool (FORKVM_POOL, FORKVM_INDEX, ...)` });
    if (isUnknown(v)) continue;
    for (const m of v.matchAll(/\{([A-Za-z_]*)\}/g)) {
      if (!(METADATA_PLACEHOLDERS as readonly string[]).includes(m[1])) {
        failures.push({ property: `metadata.${k}`, reason: `unknown placeholder {${m[1]}}; use ${METADATA_PLACEHOLDERS.map((p) => `{${p}}`).join(", ")}` });
      }
    }
  }
  const seen = new Set<string>();
  for (const [i, f] of (inputs.forwards ?? []).entries()) {
    const key = `${f.proto}:${f.guest}`;
    if (seen.has(key)) failures.push({ property: `forwards[${i}].guest`, reason: `${f.proto} port ${f.guest} is forwarded twice` });
    seen.add(key);
    if (typeof f.hostBase === "number" && f.hostBase + size - 1 > 65535) {
      failures.push({ property: `forwards[${i}].hostBase`, reason: `must be at most ${65536 - size}: child ${size} would listen on ${f.hostBase + size - 1}` });
    }
  }
  return failures;
}

function freshPrefix(engine: Engine, logicalName: string | undefined): string {
  const taken = new Set([...engine.listVms().map((v) => v.name), ...engine.listTemplates().map((t) => t.name)]);
  for (;;) {
    const prefix = generateName(logicalName, "pool", MAX_PREFIX);
    if (![...taken].some((n) => n === prefix || indexOf(prefix, n) !== undefined)) return prefix;
  }
}

/** Validates and completes the inputs, and adds the fleet's cost estimate and the plan of the next update. */
export async function check(olds: Props = {}, news: Props = {}): Promise<{ inputs: Props; failures: CheckFailure[] }> {
  const { inputs, failures } = parseInputs(InstantClonePoolInputs, news, { template: "unknown-template", size: 0 });
  if (!inputs) return { inputs: news, failures };
  const engine = openEngine(reporter(undefined, "pool"));
  if (inputs.namePrefix === undefined) {
    inputs.namePrefix = olds.__autoNamed && typeof olds.namePrefix === "string" ? olds.namePrefix : freshPrefix(engine, inputs.__logicalName);
    inputs.__autoNamed = true;
  } else {
    delete inputs.__autoNamed;
  }
  failures.push(...validateMore(inputs));
  if (failures.length) return { inputs: clean(inputs), failures };

  const prefix = inputs.namePrefix as string;
  const t = liveTemplate(engine, inputs.template);
  const shape: Shape | undefined = t
    ? { memoryMiB: t.shape.memoryMiB, vcpus: t.shape.vcpus, diskMiB: inputs.__shape?.diskMiB ?? 0, accel: t.shape.accel }
    : inputs.__shape;
  const live = isUnknown(prefix) ? [] : poolChildren(engine, prefix, knownNames(olds));
  const size = isUnknown(inputs.size) ? live.length : inputs.size;
  if (!isUnknown(inputs.persistent) && shape) {
    const running = (t ? engine.listVms().filter((v) => v.template?.name === t.name && v.status === "running") : []).slice(0, 8);
    const stats = running.length ? engine.stats(running.map((v) => v.name)) : [];
    const mine = live.filter((v) => v.status === "running").map((v) => v.name);
    const existing = mine.length ? engine.stats(mine) : [];
    inputs.estimate = estimate({
      size,
      persistent: inputs.persistent,
      shape,
      measuredPrivateMiB: stats.length ? stats.reduce((s, x) => s + x.privateMiB, 0) / stats.length : undefined,
      hostFreeMiB: hostFreeMiB(),
      existingMiB: existing.reduce((s, x) => s + x.privateMiB, 0) + (existing.length ? shape.memoryMiB : 0),
    });
  } else {
    inputs.estimate = estimate({ size, persistent: inputs.persistent === true, hostFreeMiB: hostFreeMiB() });
  }
  inputs.plan = planLines(inputs, prefix, t, live, olds);
  return { inputs: clean(inputs), failures };
}

function planLines(inputs: Props, prefix: string, t: TemplateInfo | undefined, live: VmInfo[], olds: Props): string[] {
  if (isUnknown(inputs.template) || isUnknown(inputs.size)) return [`fork ${isUnknown(inputs.size) ? "?" : inputs.size} children from a template known after deploy`];
  const desired = desiredOf(prefix, inputs, t?.generation);
  const liveChildren = live.map((v) => liveOf(v, prefix));
  const plan = planPool(desired, liveChildren);
  const metadataChanged = olds.metadata !== undefined && !same(olds.metadata, inputs.metadata);
  const lines = describePlan(plan, desired, metadataChanged, liveChildren);
  if (!t) lines.push(`template ${inputs.template} is created in this deployment`);
  const problems = t ? templateProblems(t) : [];
  if (problems.length) lines.push(`warning: template ${t!.name} is broken (${problems.join("; ")}): forks will fail`);
  return lines;
}

function templateProblems(t: TemplateInfo): string[] {
  // Cheap checks only (check runs on every preview): the checksum is verified by the engine at fork.
  const problems: string[] = [];
  if (!fs.existsSync(t.memoryPath)) problems.push("memory image missing");
  if (!fs.existsSync(t.statePath)) problems.push("checkpoint missing");
  if (t.diskPath && !fs.existsSync(t.diskPath)) problems.push("base disk missing");
  return problems;
}

// ---------------------------------------------------------------------------------------------
// diff

export async function diff(id: string, olds: Props = {}, news: Props = {}) {
  const replaces = changedKeys(olds, news, REPLACE_KEYS);
  const updates = changedKeys(olds, news, UPDATE_KEYS);
  let drift = false;
  if (!replaces.length && !updates.length && !isUnknown(news.template)) {
    const engine = openEngine(reporter(news.__urn, labelOf(news.__urn, id)));
    const t = liveTemplate(engine, news.template);
    const live = poolChildren(engine, id, knownNames(olds)).map((v) => liveOf(v, id));
    const plan = planPool(desiredOf(id, news, t?.generation), live);
    drift = plan.remove.length + plan.heal.length + plan.add.length + plan.batches.length > 0;
  }
  return { changes: replaces.length > 0 || updates.length > 0 || drift, replaces, deleteBeforeReplace: false };
}

// ---------------------------------------------------------------------------------------------
// create / update: reconcile

/** The metadata of child `index`: the user's, placeholders filled in, plus the pool's own keys. */
export function childMetadata(prefix: string, index: number, inputs: Props, t: TemplateInfo): Record<string, string> {
  const name = childName(prefix, index);
  const vars: Record<string, string> = { name, index: String(index), hostname: name, pool: prefix, template: t.name, generation: t.generation };
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries<string>(inputs.metadata ?? {})) out[k] = v.replace(/\{([A-Za-z_]+)\}/g, (m, p) => vars[p] ?? m);
  return { ...out, FORKVM_POOL: prefix, FORKVM_INDEX: String(index), FORKVM_NAME: name, FORKVM_TEMPLATE: t.name, FORKVM_GENERATION: t.generation };
}

const WRITE_METADATA =
  'mkdir -p /etc/forkvm && printf %s "$1" > /etc/forkvm/metadata.json.new && printf %s "$2" > /etc/forkvm/metadata.new && ' +
  "mv /etc/forkvm/metadata.json.new /etc/forkvm/metadata.json && mv /etc/forkvm/metadata.new /etc/forkvm/metadata";

/** Writes /etc/forkvm/metadata (KEY='value' lines) and /etc/forkvm/metadata.json in a running guest. */
export async function writeGuestMetadata(engine: Engine, name: string, metadata?: Record<string, string>): Promise<void> {
  const meta = metadata ?? engine.vm(name).metadata ?? {};
  const json = `${JSON.stringify(meta, null, 2)}\n`;
  const env = Object.entries(meta).map(([k, v]) => `${k}='${v.replace(/'/g, "'\\''")}'\n`).join("");
  const r = await engine.exec(name, ["sh", "-c", WRITE_METADATA, "sh", json, env], { timeoutMs: 15_000 });
  if (r.exitCode !== 0) throw new Error(`Cannot write the metadata of ${name}: exit ${r.exitCode}: ${r.stderr.toString().trim().slice(-300)}`);
}

interface Step {
  what: string;
  name: string;
}

async function reconcile(id: string, inputs: Props, previous: Props, metadataChanged: boolean, report: Reporter): Promise<InstantClonePoolOutputs> {
  const engine = openEngine(report, false);
  const t = engine.template(inputs.template);
  const desired = desiredOf(id, inputs, t.generation);
  const live = poolChildren(engine, id, knownNames(previous)).map((v) => liveOf(v, id));
  const plan: PoolPlan = planPool(desired, live);
  const lines = describePlan(plan, desired, metadataChanged, live);
  report.info(lines.length ? lines.join("; ") : `${inputs.size} children up to date`);

  const errors: string[] = [];
  const touched = new Set<string>();
  const total = plan.heal.length + plan.add.length + plan.batches.flat().length;
  let done = 0;
  const progress = (s: Step) => report.status(`${s.what} ${++done}/${total}: ${s.name}`);

  const fork = async (index: number) => {
    const name = childName(id, index);
    await engine.remove([name], { force: true });
    const meta = childMetadata(id, index, inputs, t);
    const r = await engine.fork({
      template: t.name, names: [name], persistent: inputs.persistent, macPrefix: inputs.macPrefix,
      forwards: inputs.forwards.map((f: Props) => ({ guest: f.guest, proto: f.proto, host: f.hostBase ? f.hostBase + index - 1 : 0 })),
      metadata: meta, readyTimeoutS: inputs.readyTimeoutS, concurrency: 1,
    });
    if (r.failed.length) throw r.failed[0].error;
    try {
      await writeGuestMetadata(engine, name, meta);
    } catch (err) {
      await engine.remove([name], { force: true });
      throw err;
    }
    touched.add(name);
  };
  const run = async <T>(what: string, items: T[], nameOf: (x: T) => string, fn: (x: T) => Promise<void>) => {
    const results = await mapLimit(items, inputs.concurrency, async (x) => {
      await fn(x);
      progress({ what, name: nameOf(x) });
    });
    results.forEach((r, i) => {
      if (!r.ok) errors.push(`${nameOf(items[i])}: ${(r.error as Error).message ?? r.error}`);
    });
    return results.every((r) => r.ok);
  };

  // 1. Children beyond size go first: they free memory for the rest.
  if (plan.remove.length) {
    report.status(`removing ${plan.remove.length} children`);
    await engine.remove(plan.remove, { force: true });
  }
  // 2. Dead children: restart in place when they are current, else fork afresh under the same name.
  await run("healed", plan.heal, (h) => h.name, async (h) => {
    if (h.how === "start") {
      await engine.start(h.name);
      await writeGuestMetadata(engine, h.name, childMetadata(id, h.index, inputs, t));
      touched.add(h.name);
    } else {
      await fork(h.index);
    }
  });
  // 3. Missing children.
  await run("forked", plan.add, (i) => childName(id, i), fork);
  // 4. Rolling update: one batch at a time; a batch that fails stops the rollout.
  const n = batchSize(desired.maxUnavailable, desired.size);
  for (const [b, batch] of plan.batches.entries()) {
    report.status(`rolling batch ${b + 1}/${plan.batches.length} (${batch.join(", ")}) to generation ${t.generation}`);
    const ok = await run("rolled", batch, (name) => name, async (name) => fork(indexOf(id, name)!));
    if (!ok) {
      errors.push(`rolling update stopped after batch ${b + 1} of ${plan.batches.length} (at most ${n} unavailable at once)`);
      break;
    }
  }
  // 5. New metadata for children that kept running.
  if (metadataChanged) {
    const keep = poolChildren(engine, id).filter((v) => v.status === "running" && !touched.has(v.name) && indexOf(id, v.name)! <= inputs.size);
    await run("metadata", keep, (v) => v.name, (v) => writeGuestMetadata(engine, v.name, childMetadata(id, indexOf(id, v.name)!, inputs, t)));
  }

  const outs = outputsOf(engine, id, inputs, previous);
  report.info(`${outs.ready}/${inputs.size} children ready on generation ${t.generation}`);
  if (errors.length) {
    throw new PartialFailure(id, outs, `Cannot bring pool ${id} to ${inputs.size} children: ${errors.length} failed: ${errors.slice(0, 5).join("; ")}${errors.length > 5 ? "; …" : ""}`, errors);
  }
  return outs;
}

export async function create(inputs: Props): Promise<{ id: string; outs: Props }> {
  const report = reporter(inputs.__urn, labelOf(inputs.__urn, inputs.namePrefix));
  try {
    return { id: inputs.namePrefix, outs: await reconcile(inputs.namePrefix, inputs, {}, false, report) };
  } finally {
    await report.flush();
  }
}

export async function update(id: string, olds: Props, news: Props): Promise<{ outs: Props }> {
  const report = reporter(news.__urn, labelOf(news.__urn, id));
  try {
    return { outs: await reconcile(id, news, olds, !same(olds.metadata, news.metadata), report) };
  } finally {
    await report.flush();
  }
}

export async function read(id: string, props: Props = {}): Promise<{ id: string; props: Props }> {
  const engine = openEngine(reporter(props.__urn, labelOf(props.__urn, id)));
  const inputs = { ...props };
  for (const k of ["children", "generation", "ready"]) delete inputs[k];
  return { id, props: outputsOf(engine, id, inputs, props) };
}

/** Removes every child of the pool; safe to repeat. */
export async function remove(id: string, props: Props = {}): Promise<void> {
  const report = reporter(props.__urn, labelOf(props.__urn, id));
  try {
    const engine = openEngine(report);
    const names = poolChildren(engine, id, knownNames(props)).map((v) => v.name);
    if (names.length) {
      report.status(`removing ${names.length} children`);
      await engine.remove(names, { force: true });
    }
  } finally {
    await report.flush();
  }
}
