// The Template provider: captures a parent (frozen or running) through the engine, reads whether
// the template's files are whole, and refuses to delete a template whose children the program
// does not manage, naming them. A template is immutable: every input change replaces it.
import * as fs from "node:fs";
import { createHash } from "node:crypto";
import type { Engine, TemplateInfo } from "../engine";
import { TemplateInputs, TEMPLATE_REPLACE_KEYS, type TemplateOutputs } from "../schema/template";
import type { Shape } from "../schema/common";
import { changedKeys, codeOf, generateName, isUnknown, openEngine, parseInputs, type CheckFailure } from "./common";
import { labelOf, reporter } from "./report";
import { clean, nameTaken } from "./util";

type Props = Record<string, any>;

/** Validates and completes the inputs; the shape comes from the live parent, else from the SDK's hint. */
export async function check(olds: Props = {}, news: Props = {}): Promise<{ inputs: Props; failures: CheckFailure[] }> {
  const { inputs, failures } = parseInputs(TemplateInputs, news, { parent: "unknown-parent" });
  if (!inputs) return { inputs: news, failures };
  const engine = openEngine(reporter(undefined, "template"));
  if (inputs.name === undefined) {
    const reuse = olds.__autoNamed && typeof olds.name === "string" && changedKeys(olds, inputs, TEMPLATE_REPLACE_KEYS.filter((k) => k !== "name")).length === 0;
    inputs.name = reuse ? olds.name : freshName(engine, inputs.__logicalName);
    inputs.__autoNamed = true;
  } else {
    delete inputs.__autoNamed;
  }
  const parent = isUnknown(inputs.parent) ? undefined : engine.findVm(inputs.parent);
  const shape: Shape | undefined = parent
    ? { memoryMiB: parent.shape.memoryMiB, vcpus: parent.shape.vcpus, diskMiB: inputs.__shape?.diskMiB ?? 0, accel: parent.shape.accel }
    : inputs.__shape;
  if (shape) inputs.shape = shape;
  // A new capture needs a parent that can still be captured.
  const creating = !engine.findTemplate(inputs.name as string);
  if (creating && parent?.status === "consumed") {
    failures.push({
      property: "parent",
      reason: `VM ${parent.name} was consumed by template ${parent.templates?.at(-1)} (source "frozen"); capture a new parent, or use source "running" to keep a parent capturable`,
    });
  }
  return { inputs: clean(inputs), failures };
}

function freshName(engine: Engine, logicalName: string | undefined): string {
  for (;;) {
    const name = generateName(logicalName, "template");
    if (!nameTaken(engine, name)) return name;
  }
}

/** What is wrong with a template's files, if anything. */
export function problemsOf(t: TemplateInfo): string[] {
  const problems: string[] = [];
  const mem = fs.statSync(t.memoryPath, { throwIfNoEntry: false });
  if (!mem) problems.push(`memory image ${t.memoryPath} is missing`);
  else if (mem.size < t.shape.memoryMiB * 1048576) problems.push(`memory image ${t.memoryPath} is truncated`);
  try {
    if (createHash("sha256").update(fs.readFileSync(t.statePath)).digest("hex") !== t.stateSha256) problems.push(`checkpoint ${t.statePath} does not match its checksum`);
  } catch {
    problems.push(`checkpoint ${t.statePath} is missing`);
  }
  if (t.diskPath && !fs.existsSync(t.diskPath)) problems.push(`base disk ${t.diskPath} is missing`);
  return problems;
}

export function outputsOf(inputs: Props, t: TemplateInfo): TemplateOutputs {
  const problems = problemsOf(t);
  const diskMiB = t.diskPath && fs.existsSync(t.diskPath) ? Math.round((fs.statSync(t.diskPath).blocks * 512) / 1048576 * 10) / 10 : 0;
  return clean({
    ...inputs,
    name: t.name,
    shape: { memoryMiB: t.shape.memoryMiB, vcpus: t.shape.vcpus, diskMiB, accel: t.shape.accel },
    generation: t.generation,
    createdAt: t.createdAt,
    status: problems.length ? "broken" : "ready",
    problems,
    stateBytes: t.stateBytes,
    downtimeMs: t.timings.downtimeMs,
    children: t.children,
  }) as TemplateOutputs;
}

export async function create(inputs: Props): Promise<{ id: string; outs: Props }> {
  const report = reporter(inputs.__urn, labelOf(inputs.__urn, inputs.name));
  try {
    const engine = openEngine(report);
    report.status(`capturing ${inputs.parent} (${inputs.source})`);
    const t = await engine.createTemplate({ name: inputs.name, parent: inputs.parent, source: inputs.source, downtimeLimitMs: inputs.downtimeLimitMs });
    report.info(`template ${t.name} generation ${t.generation} captured from ${t.parent} (${t.source}): parent paused ${t.timings.downtimeMs} ms`);
    return { id: t.name, outs: outputsOf(inputs, engine.template(t.name)) };
  } finally {
    await report.flush();
  }
}

export async function read(id: string, props: Props = {}): Promise<{ id: string; props: Props }> {
  const engine = openEngine(reporter(props.__urn, labelOf(props.__urn, id)));
  const t = engine.findTemplate(id);
  if (!t) return { id: "", props: {} };
  return { id, props: outputsOf(props, t) };
}

export async function diff(_id: string, olds: Props = {}, news: Props = {}) {
  const replaces = changedKeys(olds, news, TEMPLATE_REPLACE_KEYS);
  return {
    changes: replaces.length > 0,
    replaces,
    // A pinned name cannot exist twice; a generated one lets the pool roll over before the old template goes.
    deleteBeforeReplace: replaces.length > 0 && !news.__autoNamed,
  };
}

/** Nothing changes in place; returns the full outputs so the state stays complete. */
export async function update(id: string, olds: Props, news: Props): Promise<{ outs: Props }> {
  const engine = openEngine(reporter(news.__urn, labelOf(news.__urn, id)));
  const t = engine.findTemplate(id);
  return { outs: t ? outputsOf(news, t) : clean({ ...olds, ...news }) };
}

/**
 * Removes the template. Refuses while children remain (they would lose their memory image):
 * the error names them and the pool that owns each. A template that is already gone is fine.
 */
export async function remove(id: string, props: Props = {}): Promise<void> {
  const report = reporter(props.__urn, labelOf(props.__urn, id));
  try {
    const engine = openEngine(report);
    const t = engine.findTemplate(id);
    if (!t) return;
    if (t.children.length) throw new Error(hasChildrenMessage(engine, id, t.children));
    try {
      await engine.remove([id]);
    } catch (err) {
      if (codeOf(err) === "HAS_CHILDREN") throw new Error(hasChildrenMessage(engine, id, engine.template(id).children));
      throw err;
    }
  } finally {
    await report.flush();
  }
}

function hasChildrenMessage(engine: Engine, id: string, children: string[]): string {
  const byPool = new Map<string, string[]>();
  for (const name of children) {
    let pool = "";
    try {
      pool = engine.vm(name).metadata?.FORKVM_POOL ?? "";
    } catch {
      /* removed meanwhile */
    }
    byPool.set(pool, [...(byPool.get(pool) ?? []), name]);
  }
  const list = (names: string[]) => (names.length > 5 ? `${names.slice(0, 5).join(", ")}, …` : names.join(", "));
  const loose = byPool.get("") ?? [];
  const parts = [
    ...(loose.length ? [`${list(loose)} (in no pool)`] : []),
    ...[...byPool].filter(([p]) => p).map(([p, names]) => `${list(names)} (pool ${p})`),
  ];
  const advice = [
    ...(loose.length ? [`remove the children no pool owns (\`forkvm rm ${loose.slice(0, 5).join(" ")}${loose.length > 5 ? " …" : ""}\`)`] : []),
    ...(byPool.size > (loose.length ? 1 : 0) ? ["point the pools at another template or delete them (a pool of this program rolls over to a new template before the old one is deleted)"] : []),
  ];
  return `Cannot delete template ${id}: ${children.length} ${children.length === 1 ? "child still uses" : "children still use"} it: ${parts.join("; ")}. ` +
    `Deleting it would take their memory image away: ${advice.join(", and ")}, then run the update again.`;
}
