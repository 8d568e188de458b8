// What the three providers share: values unknown during preview, check failures that name the
// property, generated names, diffs of input properties, and opening the engine with a reporter.
import { randomBytes } from "node:crypto";
import type { z } from "zod";
import { Engine, ForkvmError, makeLogger } from "../engine";
import type { Reporter } from "./report";

/** How the Pulumi engine spells a value that is not known yet (preview). */
export const UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9";

export function isUnknown(v: unknown): boolean {
  return v === UNKNOWN;
}

export interface CheckFailure {
  property: string;
  reason: string;
}

type Path = Array<string | number>;

/** Renders a path the way users write it: forwards[0].guest. */
export function pathString(path: readonly PropertyKey[]): string {
  let out = "";
  for (const p of path) out += typeof p === "number" ? `[${p}]` : out ? `.${String(p)}` : String(p);
  return out;
}

/** Paths of every unknown value in `v`. */
export function unknownPaths(v: unknown, at: Path = []): Path[] {
  if (isUnknown(v)) return [at];
  if (Array.isArray(v)) return v.flatMap((x, i) => unknownPaths(x, [...at, i]));
  if (v && typeof v === "object") return Object.entries(v).flatMap(([k, x]) => unknownPaths(x, [...at, k]));
  return [];
}

function startsWith(path: readonly PropertyKey[], prefix: Path): boolean {
  return prefix.length <= path.length && prefix.every((p, i) => path[i] === p);
}

function setPath(obj: any, path: Path, value: unknown): void {
  let o = obj;
  for (let i = 0; i < path.length - 1; i++) {
    const p = path[i];
    if (o[p] === undefined || o[p] === null || typeof o[p] !== "object") o[p] = typeof path[i + 1] === "number" ? [] : {};
    o = o[p];
  }
  o[path[path.length - 1]] = value;
}

function without(v: unknown): unknown {
  if (isUnknown(v)) return undefined;
  if (Array.isArray(v)) return v.map(without);
  if (v && typeof v === "object") {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) if (!isUnknown(x)) out[k] = without(x);
    return out;
  }
  return v;
}

/**
 * Validates `news` against a strict schema. Values unknown during preview are not judged: they are
 * replaced by `placeholders` (for required properties) while parsing and put back afterwards.
 * Returns the parsed inputs (defaults applied) or failures that name the property.
 */
export function parseInputs<S extends z.ZodType>(
  schema: S,
  news: Record<string, unknown>,
  placeholders: Record<string, unknown> = {},
): { inputs?: z.output<S> & Record<string, unknown>; failures: CheckFailure[] } {
  const { __provider: _provider, ...given } = news;
  news = given;
  const unknowns = unknownPaths(news);
  const clone = without(news) as Record<string, unknown>;
  for (const [k, v] of Object.entries(placeholders)) if (isUnknown(news[k])) clone[k] = v;
  const r = schema.safeParse(clone);
  if (r.success) {
    const inputs = r.data as Record<string, unknown>;
    for (const p of unknowns) setPath(inputs, p, UNKNOWN);
    return { inputs: inputs as any, failures: [] };
  }
  const failures: CheckFailure[] = [];
  for (const issue of r.error.issues) {
    if (unknowns.some((u) => startsWith(issue.path, u))) continue;
    if (issue.code === "unrecognized_keys") {
      const known = issue.path.length ? [] : Object.keys((schema as any).shape ?? {}).filter((k) => !k.startsWith("__"));
      for (const key of issue.keys) {
        failures.push({ property: pathString([...issue.path, key]), reason: known.length ? `unknown property; known properties are ${known.join(", ")}` : "unknown property" });
      }
      continue;
    }
    failures.push({ property: pathString(issue.path) || "(inputs)", reason: reasonOf(issue) });
  }
  if (failures.length) return { failures };
  return { inputs: news as any, failures: [] };
}

function reasonOf(issue: z.core.$ZodIssue): string {
  if (issue.code === "invalid_type") {
    if (!issue.message.startsWith("Invalid input")) return issue.message;
    if ((issue.expected as string) === "int") return "must be an integer";
    const got = issue.message.match(/received (\w+)/)?.[1];
    if (got === "undefined") return `required: must be ${article(issue.expected)}`;
    return `must be ${article(issue.expected)}${got ? `, not ${article(got)}` : ""}`;
  }
  if (issue.code === "invalid_key") return `invalid key: ${(issue.issues[0]?.message ?? issue.message).replace(/^Invalid string: /, "")}`;
  if (issue.code === "invalid_union") return "must be a count (integer ≥ 1) or a percentage such as \"25%\"";
  return issue.message;
}

function article(t: string): string {
  return /^[aeiou]/.test(t) ? `an ${t}` : `a ${t}`;
}

/** A name for an engine object from the resource's name: lower-case, dashes, a random suffix. */
export function generateName(logicalName: string | undefined, fallback: string, maxLen = 63): string {
  const base = (logicalName ?? fallback)
    .toLowerCase()
    .replace(/[^a-z0-9-]+/g, "-")
    .replace(/^-+|-+$/g, "")
    .replace(/-{2,}/g, "-") || fallback;
  const suffix = randomBytes(2).toString("hex");
  return `${base.slice(0, Math.max(1, maxLen - suffix.length - 1)).replace(/-+$/, "")}-${suffix}`;
}

/** Deep equality of JSON values (property order ignored). */
export function same(a: unknown, b: unknown): boolean {
  return JSON.stringify(canonical(a)) === JSON.stringify(canonical(b));
}

function canonical(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(canonical);
  if (v && typeof v === "object") {
    return Object.fromEntries(Object.entries(v).filter(([, x]) => x !== undefined).sort(([a], [b]) => a.localeCompare(b)).map(([k, x]) => [k, canonical(x)]));
  }
  return v;
}

/** The input keys among `keys` whose values differ between old outputs and new inputs. */
export function changedKeys(olds: Record<string, unknown>, news: Record<string, unknown>, keys: readonly string[]): string[] {
  return keys.filter((k) => !same(olds[k], news[k]));
}

/**
 * The engine for one provider call: logs (warnings and errors) and, unless `progress` is false
 * (the pool reports its own), the engine's progress go to the reporter.
 */
export function openEngine(report: Reporter, progress = true): Engine {
  const log = makeLogger((level, msg, fields) => {
    const who = typeof fields.vm === "string" ? `${fields.vm}: ` : "";
    if (level === "warn") report.warn(`${who}${msg}`);
    else if (level === "error") report.warn(`${who}${msg}`);
  });
  return new Engine({
    log,
    progress: (p) => {
      if (!progress) return;
      const count = p.total ? ` ${p.done ?? 0}/${p.total}` : "";
      report.status(`${p.step}${count}${p.message ? `: ${p.message}` : ""}`);
    },
  });
}

/** The engine's error code, or undefined for anything else. */
export function codeOf(err: unknown): string | undefined {
  return err instanceof ForkvmError ? err.code : (err as { code?: string })?.code;
}

/**
 * An error Pulumi records as a partial failure: the resource exists with `properties` as its
 * outputs (so the next update continues from there), and the update reports `message`.
 */
export class PartialFailure extends Error {
  constructor(readonly id: string, readonly properties: Record<string, unknown>, message: string, readonly reasons: string[] = [message]) {
    super(message);
    this.name = "PartialFailure";
  }
}
