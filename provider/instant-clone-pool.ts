// The InstantClonePool provider: a thin, typed adapter over the engine's pools (engine/ops/pool.ts),
// which own every rule (plan, reconcile, heal, roll, ownership, metadata).
//   check → validate + name + engine.planPool (the cost estimate and the plan, shown by preview)
//   diff  → changed inputs, or drift the engine's plan sees
//   create/update → engine.applyPool (per-child failures become a partial failure with outputs)
//   read  → engine.findPool      delete → engine.removePool
import type { z } from "zod";
import type { ApplyResult, Engine, PoolArgs, PoolInfo } from "../engine";
import { InstantClonePoolInputs, type Child, type InstantClonePoolOutputs } from "../schema/instant-clone-pool";
import type { Shape } from "../schema/common";
import { autoName, changedKeys, codeOf, engineFor, homeChange, homeForCheck, isUnknown, nameSeed, parseInputs, pathString, PartialFailure, providerCall, redactFailures, type CheckFailure } from "./common";
import { labelOf, redactor, reporter, secretValues } from "./report";
import { clean } from "./util";

/** The checked inputs: the schema's output plus what check adds. */
type Inputs = z.output<typeof InstantClonePoolInputs> & { name: string; __home?: string; estimate: InstantClonePoolOutputs["estimate"]; plan: string[] };
/** What Pulumi hands back: the outputs of the last create/update/read (or nothing). Untrusted: read field by field. */
type Outputs = Record<string, unknown>;
type PoolOutputs = InstantClonePoolOutputs;

const UPDATE_KEYS = ["template", "size", "persistent", "macPrefix", "metadata", "forwards", "updatePolicy", "concurrency", "readyTimeoutS"] as const;
/** Room left in a 63-character name for "-<n>" with n up to 10000. */
const MAX_NAME = 57;

/** The engine's arguments from the checked inputs: the one place Pulumi's names meet the engine's. */
function argsOf(inputs: Inputs, size = inputs.size): PoolArgs {
  return {
    name: inputs.name, template: inputs.template, size, persistent: inputs.persistent, prefix: inputs.namePrefix,
    macPrefix: inputs.macPrefix, metadata: inputs.metadata, forwards: inputs.forwards, updatePolicy: inputs.updatePolicy,
    concurrency: inputs.concurrency, readyTimeoutS: inputs.readyTimeoutS,
  };
}

/** Check failures from the engine's INVALID_ARGUMENT (one per field), with the engine's field names as Pulumi's. */
function failuresOf(err: unknown): CheckFailure[] {
  const e = err as { message?: string; details?: { field?: string; fields?: Array<{ field: string; message: string }> } };
  const property = (f: string) => pathString(f.split(".").map((k) => (/^\d+$/.test(k) ? Number(k) : k === "prefix" ? "namePrefix" : k)));
  if (e.details?.fields?.length) return e.details.fields.map((f) => ({ property: property(f.field), reason: f.message }));
  return [{ property: property(e.details?.field ?? "(inputs)"), reason: (e.message ?? String(err)).replace(/^Cannot plan pool [^:]*: /, "") }];
}

function outputsOf(inputs: Inputs, pool: PoolInfo, home: string): PoolOutputs {
  return clean({
    ...inputs,
    name: pool.name,
    namePrefix: pool.spec.prefix ?? pool.name,
    plan: [],
    children: pool.children as Child[],
    generation: pool.generation ?? "",
    ready: pool.ready,
    home,
  }) as PoolOutputs;
}

// ---------------------------------------------------------------------------------------------

/** The pool's name: given, kept from the last run, or generated from the URN (the same in preview and up). */
function nameOf(engine: Engine, olds: Outputs, inputs: Inputs & Record<string, unknown>): { name: string; auto: boolean } {
  if (typeof inputs.name === "string") return { name: inputs.name, auto: false };
  if (olds.__autoNamed && typeof olds.name === "string") return { name: olds.name, auto: true };
  // State written before pools had names: the pool was known by its children's prefix.
  if (olds.__autoNamed && typeof olds.namePrefix === "string") return { name: olds.namePrefix, auto: true };
  const taken = (n: string) => engine.store.kindOf(n) !== undefined || engine.listVms().some((v) => v.name.startsWith(`${n}-`));
  return { name: autoName({ seed: nameSeed(inputs), base: inputs.__logicalName, fallback: "pool", maxLen: MAX_NAME, taken }), auto: true };
}

/** Validates and completes the inputs: the pool's name, and the engine's plan and cost estimate of the next update. */
export async function check(olds: Outputs = {}, news: Record<string, unknown> = {}): Promise<{ inputs: Inputs; failures: CheckFailure[] }> {
  const { inputs: parsed, failures } = parseInputs(InstantClonePoolInputs, news, { template: "unknown-template", size: 0 });
  if (!parsed) return { inputs: news as Inputs, failures: redactFailures(failures, news) };
  const inputs = parsed as Inputs & Record<string, unknown>;
  const home = homeForCheck(olds, news);
  const engine = engineFor(news, reporter(undefined, "pool"), { home, progress: false });
  const { name, auto } = nameOf(engine, olds, inputs);
  inputs.name = name;
  if (auto) inputs.__autoNamed = true;
  else delete inputs.__autoNamed;
  inputs.__home = home;
  const shape = inputs.__shape as Shape | undefined;
  if (isUnknown(inputs.template) || isUnknown(inputs.size)) {
    // The engine cannot plan what is not known yet: estimate from the template's shape, if given.
    const placeholder = { ...argsOf(inputs, isUnknown(inputs.size) ? 0 : inputs.size), template: "unknown-template" };
    const change = engine.planPool(placeholder, { shape, templatePending: true });
    inputs.estimate = change.estimate;
    inputs.plan = [`fork ${isUnknown(inputs.size) ? "?" : inputs.size} children from a template known after deploy`];
    return { inputs: clean(inputs), failures };
  }
  try {
    const change = engine.planPool(argsOf(inputs), { shape, templatePending: true });
    inputs.estimate = change.estimate;
    // Plan lines name children, never metadata values; redacted all the same, as the SDK logs them.
    const clean = redactor(secretValues(news));
    inputs.plan = change.lines.map(clean);
  } catch (err) {
    if (codeOf(err) !== "INVALID_ARGUMENT" && codeOf(err) !== "CONFLICT") throw err;
    failures.push(...failuresOf(err));
  }
  return { inputs: clean(inputs), failures: redactFailures(failures, news) };
}

export async function diff(id: string, olds: Outputs = {}, input: Record<string, unknown> = {}) {
  const news = input as Inputs;
  // The children's prefix defaults to the pool's name: compare what each side means, not what it spells.
  const prefix = (p: Record<string, unknown>) => p.namePrefix ?? p.name;
  const replaces = [
    ...changedKeys(olds, news, ["name"]),
    ...(prefix(olds) !== undefined && prefix(olds) !== prefix(news) ? ["namePrefix"] : []),
    ...homeChange(olds, news),
  ];
  const updates = changedKeys(olds, news, UPDATE_KEYS);
  let drift = false;
  if (!replaces.length && !updates.length && !isUnknown(news.template)) {
    const engine = engineFor(olds, reporter(news.__urn, labelOf(news.__urn, id)), { progress: false });
    try {
      drift = engine.planPool(argsOf({ ...news, name: id })).changes;
    } catch {
      drift = true; // e.g. the template is gone: update says why
    }
  }
  return { changes: replaces.length > 0 || updates.length > 0 || drift, replaces, deleteBeforeReplace: false };
}

/** Applies the pool; a pool that is only partly as declared is a partial failure carrying its outputs. */
async function apply(id: string, inputs: Inputs, props: Array<Record<string, unknown>>): Promise<PoolOutputs> {
  return providerCall(props, labelOf(inputs.__urn, id), async (report) => {
    const engine = engineFor(inputs, report);
    const r: ApplyResult = await engine.applyPool(argsOf({ ...inputs, name: id }));
    report.info(r.lines.length ? r.lines.join("; ") : `${inputs.size} children up to date`);
    const outs = outputsOf(inputs, r, engine.store.home);
    report.info(`${outs.ready}/${inputs.size} children ready on generation ${outs.generation}`);
    if (r.errors.length) {
      throw new PartialFailure(id, outs, `Cannot bring pool ${id} to ${inputs.size} children: ${r.errors.length} failed: ${r.errors.slice(0, 5).join("; ")}${r.errors.length > 5 ? "; …" : ""}`, r.errors);
    }
    return outs;
  });
}

export async function create(input: Record<string, unknown>): Promise<{ id: string; outs: PoolOutputs }> {
  const inputs = input as Inputs;
  return { id: inputs.name, outs: await apply(inputs.name, inputs, [inputs]) };
}

export async function update(id: string, olds: Outputs, news: Record<string, unknown>): Promise<{ outs: PoolOutputs }> {
  return { outs: await apply(id, news as Inputs, [olds, news]) };
}

export async function read(id: string, props: Outputs = {}): Promise<{ id: string; props: PoolOutputs }> {
  const engine = engineFor(props, reporter(props.__urn as string | undefined, labelOf(props.__urn as string | undefined, id)), { progress: false });
  const pool = engine.findPool(id);
  if (!pool) {
    // State from before pools were engine objects: the next update adopts its children.
    return Array.isArray(props.children) && props.children.length ? { id, props: props as PoolOutputs } : { id: "", props: {} as PoolOutputs };
  }
  return { id, props: outputsOf(props as unknown as Inputs, pool, engine.store.home) };
}

/** Removes the pool and the children it owns (only those); safe to repeat. */
export async function remove(id: string, props: Outputs = {}): Promise<void> {
  await providerCall(props, labelOf(props.__urn as string | undefined, id), async (report) => {
    const engine = engineFor(props, report);
    if (!engine.findPool(id) && Array.isArray(props.children) && props.children.length && typeof props.template === "string") {
      // Children made before pools were engine objects: adopted (by their marker) and removed.
      await engine.applyPool(argsOf({ ...(props as unknown as Inputs), name: id }, 0));
    }
    const removed = await engine.removePool(id);
    if (removed.length) report.info(`removed ${removed.length - 1} children and the pool`);
  });
}
