// The Template provider: captures a parent (frozen or running) through the engine, reads whether
// the template's files are whole, and refuses to delete a template whose children the program
// does not manage, naming them; always in the forkvm home the template lives in. A template is
// immutable: every input change (and a new home) replaces it.
import * as fs from "node:fs";
import { templateProblems, type Engine, type TemplateInfo } from "../engine";
import { TemplateInputs, TEMPLATE_REPLACE_KEYS, type TemplateOutputs } from "../schema/template";
import type { Shape } from "../schema/common";
import { autoName, changedKeys, codeOf, engineFor, homeChange, homeForCheck, isUnknown, nameSeed, parseInputs, providerCall, redactFailures, type CheckFailure } from "./common";
import type { Reporter } from "./report";
import { clean, nameTaken } from "./util";

type Props = Record<string, any>;

/**
 * Validates and completes the inputs: the home (`__home`), a generated name, the shape (from
 * the live parent, else from the SDK's hint), and whether the parent can still be captured.
 * Neither failure reasons nor a thrown error quote a secret.
 */
export async function check(olds: Props = {}, news: Props = {}): Promise<{ inputs: Props; failures: CheckFailure[] }> {
  return providerCall([olds, news], "template", (report) => checkInputs(olds, news, report));
}

async function checkInputs(olds: Props, news: Props, report: Reporter): Promise<{ inputs: Props; failures: CheckFailure[] }> {
  const { inputs, failures } = parseInputs(TemplateInputs, news, { parent: "unknown-parent" });
  if (!inputs) return { inputs: news, failures: redactFailures(failures, news) };
  const home = homeForCheck(olds, news);
  inputs.__home = home;
  const engine = engineFor(news, report, { home, progress: false });
  if (inputs.name === undefined) {
    // Keep a generated name unless the template is replaced (Pulumi then re-checks the replacement without olds).
    const replaced = changedKeys(olds, inputs, TEMPLATE_REPLACE_KEYS.filter((k) => k !== "name")).length > 0 || homeChange(olds, inputs).length > 0;
    const keep = olds.__autoNamed && typeof olds.name === "string" && !replaced;
    inputs.name = keep
      ? olds.name
      : autoName({ seed: nameSeed(news), base: news.__logicalName, fallback: "template", taken: (n) => n === olds.name || nameTaken(engine, n) });
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
  return { inputs: clean(inputs), failures: redactFailures(failures, news) };
}

/** What is wrong with a template's files, if anything (the engine's one integrity check, checksum included). */
export function problemsOf(t: TemplateInfo): string[] {
  return templateProblems(t, { deep: true });
}

/** The outputs: the checked inputs plus the template as the engine has it, and the home it lives in. */
export function outputsOf(inputs: Props, t: TemplateInfo, home: string): TemplateOutputs {
  const problems = problemsOf(t);
  const diskMiB = t.diskPath && fs.existsSync(t.diskPath) ? Math.round((fs.statSync(t.diskPath).blocks * 512) / 1048576 * 10) / 10 : 0;
  return clean({
    ...inputs,
    home,
    name: t.name,
    shape: { memoryMiB: t.shape.memoryMiB, vcpus: t.shape.vcpus, diskMiB, accel: t.shape.accel },
    generation: t.generation,
    createdAt: t.createdAt,
    status: problems.length ? "broken" : "ready",
    problems,
    stateBytes: t.stateBytes,
    downtimeMs: t.timings.downtimeMs,
    children: t.children,
  }) as unknown as TemplateOutputs;
}

export async function create(inputs: Props): Promise<{ id: string; outs: Props }> {
  return providerCall(inputs, inputs.name, async (report) => {
    const engine = engineFor(inputs, report);
    report.status(`capturing ${inputs.parent} (${inputs.source})`);
    const t = await engine.createTemplate({ name: inputs.name, parent: inputs.parent, source: inputs.source, downtimeLimitMs: inputs.downtimeLimitMs, quiesceTimeoutMs: inputs.quiesceTimeoutMs });
    report.info(`template ${t.name} generation ${t.generation} captured from ${t.parent} (${t.source}): parent paused ${t.timings.downtimeMs} ms`);
    return { id: t.name, outs: outputsOf(inputs, engine.template(t.name), engine.store.home) };
  });
}

/** The template as it is now, in the home it was created in; gone from the engine: no resource. */
export async function read(id: string, props: Props = {}): Promise<{ id: string; props: Props }> {
  return providerCall(props, id, async (report) => {
    const engine = engineFor(props, report);
    const t = engine.findTemplate(id);
    if (!t) return { id: "", props: {} };
    return { id, props: outputsOf(props, t, engine.store.home) };
  });
}

export async function diff(id: string, olds: Props = {}, news: Props = {}) {
  return providerCall([olds, news], id, async () => {
    const replaces = [...changedKeys(olds, news, TEMPLATE_REPLACE_KEYS), ...homeChange(olds, news)];
    return {
      changes: replaces.length > 0,
      replaces,
      // A pinned name cannot exist twice; a generated one lets the pool roll over before the old template goes.
      deleteBeforeReplace: replaces.length > 0 && !news.__autoNamed,
    };
  });
}

/** Nothing changes in place; returns the full outputs so the state stays complete. */
export async function update(id: string, olds: Props, news: Props): Promise<{ outs: Props }> {
  return providerCall([olds, news], id, async (report) => {
    const engine = engineFor(olds, report);
    const t = engine.findTemplate(id);
    return { outs: t ? outputsOf(news, t, engine.store.home) : clean({ ...olds, ...news, home: engine.store.home }) };
  });
}

/**
 * Removes the template from the home it lives in. Refuses while children remain (they would
 * lose their memory image): the error names them and the pool that owns each. A template that
 * is already gone is fine.
 */
export async function remove(id: string, props: Props = {}): Promise<void> {
  return providerCall(props, id, async (report) => {
    const engine = engineFor(props, report);
    const t = engine.findTemplate(id);
    if (!t) return;
    if (t.children.length) throw new Error(hasChildrenMessage(engine, id, t.children));
    try {
      await engine.remove([id]);
    } catch (err) {
      if (codeOf(err) === "HAS_CHILDREN") throw new Error(hasChildrenMessage(engine, id, engine.template(id).children));
      throw err;
    }
  });
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
