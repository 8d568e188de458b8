// What the three providers share: values unknown during preview, check failures that name the
// property, generated names, diffs of input properties, the forkvm home a resource lives in, and
// one call wrapper that opens the engine there with a reporter that keeps secrets out of messages.
import { createHash } from "node:crypto";
import * as path from "node:path";
import type { z } from "zod";
import { defaultHome, Engine, ForkvmError, makeLogger } from "../engine";
import { redactError, redactor, reporterFor, secretFields, secretValues, type Reporter } from "./report";
import { pathString } from "./util";

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

export { pathString };

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
const MAX_INPUT_DEPTH = 32;

/** The first property (as users write it) of `v` nested deeper than `max`, without recursion; undefined when none is. */
function deeperThan(v: unknown, max: number): string | undefined {
  const stack: Array<{ v: unknown; path: Path }> = [{ v, path: [] }];
  while (stack.length) {
    const { v: x, path } = stack.pop()!;
    if (path.length > max) return pathString(path.slice(0, max + 1)) || "(inputs)";
    if (x && typeof x === "object") for (const [k, y] of Object.entries(x)) stack.push({ v: y, path: [...path, Array.isArray(x) ? Number(k) : k] });
  }
  return undefined;
}

export function parseInputs<S extends z.ZodType>(
  schema: S,
  news: Record<string, unknown>,
  placeholders: Record<string, unknown> = {},
): { inputs?: z.output<S> & Record<string, unknown>; failures: CheckFailure[] } {
  const { __provider: _provider, ...given } = news;
  news = given;
  // No input of ours nests deeper than a few levels; a hostile one would overflow the recursions below.
  const tooDeep = deeperThan(news, MAX_INPUT_DEPTH);
  if (tooDeep) return { failures: [{ property: tooDeep, reason: `nested deeper than ${MAX_INPUT_DEPTH} levels` }] };
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

const NAME_MAX = 63;
const SUFFIX_HEX = 4;
/** How many candidates `autoName` tries before it gives up (each is taken only if an object has that exact name). */
const NAME_CANDIDATES = 4096;

/** The base of generated names: lower-case letters, digits and single dashes, at most `room` characters. */
function slug(name: string | undefined, fallback: string, room: number): string {
  const base = (name ?? "")
    .toLowerCase()
    .replace(/[^a-z0-9-]+/g, "-")
    .replace(/-{2,}/g, "-")
    .replace(/^-+|-+$/g, "") || fallback;
  return base.slice(0, Math.max(1, room)).replace(/-+$/, "") || fallback.slice(0, Math.max(1, room));
}

export interface AutoNameRequest {
  /**
   * What makes the name reproducible: the resource's URN (`__urn`), the same in `pulumi preview`
   * and `pulumi up`, different per stack and per resource. Without one, the logical name.
   */
  seed: string;
  /** The resource's name in the program (`__logicalName`): the readable part of the name. */
  base?: string;
  /** The readable part when `base` has nothing usable ("parent", "template", "pool"). */
  fallback: string;
  /** Longest name allowed (default 63); a pool passes less to leave room for "-<n>". */
  maxLen?: number;
  /** Whether a candidate is unusable: an object of that name exists, or it is the old name of the resource being replaced. */
  taken: (name: string) => boolean;
}

/**
 * The generated name of an engine object, a pure function of its URN and of what is taken:
 * candidate k (k = 0, 1, 2, …) is `<slug of base>-<hhhh>`, hhhh the first 4 hex digits of
 * sha256("<seed>#<k>"); the first candidate not `taken` wins. So preview and up, which see the
 * same engine, pick the same name; a replacement checked while the old object still exists (as
 * Pulumi re-checks it, without olds, in preview and in up alike) skips the old name and gets the
 * next candidate; two stacks in one home get different names. Keeping a name across updates is
 * the caller's part: reuse the old name unless the resource is replaced.
 * Throws ALREADY_EXISTS when 4096 candidates in a row are taken.
 */
export function autoName(req: AutoNameRequest): string {
  const maxLen = req.maxLen ?? NAME_MAX;
  const base = slug(req.base, req.fallback, maxLen - SUFFIX_HEX - 1);
  for (let k = 0; k < NAME_CANDIDATES; k++) {
    const suffix = createHash("sha256").update(`${req.seed}#${k}`).digest("hex").slice(0, SUFFIX_HEX);
    const name = `${base}-${suffix}`;
    if (!req.taken(name)) return name;
  }
  throw new ForkvmError("ALREADY_EXISTS", `Cannot generate a name for ${req.base ?? req.fallback}: the first ${NAME_CANDIDATES} candidates ${base}-xxxx are all taken; give the resource a name`);
}

/** The seed of a resource's generated name: its URN, else its logical name (calls made without a URN, as in tests). */
export function nameSeed(props: Record<string, unknown>): string {
  if (typeof props.__urn === "string" && !isUnknown(props.__urn)) return props.__urn;
  return `logical:${typeof props.__logicalName === "string" ? props.__logicalName : ""}`;
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

// ---------------------------------------------------------------------------------------------
// The forkvm home a resource lives in

type Props = Record<string, unknown>;

function given(v: unknown): string | undefined {
  return typeof v === "string" && v !== "" && !isUnknown(v) ? path.resolve(v) : undefined;
}

/**
 * The home (state directory) a resource lives in, for every call after check: read, diff,
 * update, delete take it from the resource's outputs, create from its checked inputs.
 *  1. `props.home`: the output every resource records (the home it was created in);
 *  2. `props.__home`: in checked inputs, the home check chose (see `homeForCheck`);
 *  3. the engine's default (FORKVM_HOME, else $XDG_STATE_HOME/forkvm, else ~/.local/state/forkvm),
 *     only for state written before resources recorded their home.
 * So a resource is read, updated and deleted where it was created, whatever FORKVM_HOME says now.
 */
export function homeOf(props: Props = {}): string {
  return given(props.home) ?? given(props.__home) ?? defaultHome();
}

/**
 * The home check places a resource in, recorded by check as the checked input `__home` (create
 * then opens it, and every output carries it as `home`):
 *  1. `news.__home`: the stack's `forkvm:home` config, which the SDK passes (a relative path is
 *     taken from the project directory, the cwd of program and provider alike);
 *  2. `olds.__home`: where the resource already lives (checked inputs of the last run);
 *  3. the engine's default (FORKVM_HOME, XDG), for a new resource of a stack without the config.
 * A changed `forkvm:home` therefore moves the resource: diff reports `home` as a replacement
 * (`homeChange`), the new one is created in the new home and the old deleted from the old one.
 * Removing the config, or a different FORKVM_HOME, moves nothing.
 */
export function homeForCheck(olds: Props = {}, news: Props = {}): string {
  return given(news.__home) ?? given(olds.__home) ?? given(olds.home) ?? defaultHome();
}

/**
 * `["home"]` when the checked inputs place the resource in another home than the one it lives in
 * (`homeOf(olds)`: recorded, else, for state from before homes were recorded, the environment's),
 * else `[]`: add it to diff's replaces.
 */
export function homeChange(olds: Props = {}, news: Props = {}): string[] {
  const was = homeOf(olds);
  const now = given(news.__home);
  return now && was !== now ? ["home"] : [];
}

export interface EngineForOptions {
  /** Report the engine's progress lines as status (default true; the pool reports its own). */
  progress?: boolean;
  /** Open this home instead of the one `props` record (check passes `homeForCheck(olds, news)`). */
  home?: string;
}

/**
 * The engine of one provider call, opened on the home the resource lives in (`homeOf(props)`,
 * or `opts.home`), with the engine's warnings and errors (and, unless `progress` is false, its
 * progress) going to `report`, which redacts the resource's secrets. `engine.store.home` is the
 * home to record in the outputs as `home`.
 *
 *   create:  engineFor(inputs, report)          read/delete: engineFor(props, report)
 *   diff/update: engineFor(olds, report)        check: engineFor(news, report, { home: homeForCheck(olds, news) })
 */
export function engineFor(props: Props, report: Reporter, opts: EngineForOptions = {}): Engine {
  const progress = opts.progress ?? true;
  const log = makeLogger((level, msg, fields) => {
    const who = typeof fields.vm === "string" ? `${fields.vm}: ` : "";
    if (level === "warn" || level === "error") report.warn(`${who}${msg}`);
  });
  return new Engine({
    home: opts.home ?? homeOf(props),
    log,
    progress: (p) => {
      if (!progress) return;
      const count = p.total ? ` ${p.done ?? 0}/${p.total}` : "";
      // A step without a counter is a milestone (booting, a roll batch): never coalesced away.
      report.status(`${p.step}${count}${p.message ? `: ${p.message}` : ""}`, p.total === undefined);
    },
  });
}

/**
 * Runs one provider method for the resource whose inputs/outputs are `props` (olds and news for
 * diff and update): `fn` gets a reporter on the resource's row that redacts the resource's
 * secrets (`secretValues` of every props given) from each message; a thrown error is redacted
 * the same way before the dynamic-provider host prints it or sends it to the CLI (message,
 * stack, reasons, details, causes; and an engine error about a secret field, such as a failed
 * secret init command, loses that command's output too: see `redactError`); the reporter is
 * flushed whatever happens.
 */
export async function providerCall<T>(props: Props | Props[], label: string, fn: (report: Reporter) => Promise<T>): Promise<T> {
  const all = Array.isArray(props) ? props : [props];
  const report = reporterFor(all, label);
  try {
    return await fn(report);
  } catch (err) {
    throw redactError(err, all.flatMap((p) => secretValues(p)), all.flatMap((p) => secretFields(p)));
  } finally {
    await report.flush();
  }
}

/** Check failures with the secrets of `news` redacted from their reasons (a reason may quote a value). */
export function redactFailures(failures: CheckFailure[], news: Props): CheckFailure[] {
  const clean = redactor(secretValues(news));
  return failures.map((f) => ({ property: f.property, reason: clean(f.reason) }));
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
