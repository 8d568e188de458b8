// Progress and warnings where the user sees them, with every secret of the resource redacted.
// Inside the Pulumi CLI the dynamic-provider host gets the engine's address as its argument; the
// engine's Log RPC with the resource's URN puts a message on that resource's row (ephemeral: the
// status column; otherwise also under "Diagnostics"). Without an engine (tests, `npm run up`
// without the CLI) messages go to stderr, which the CLI shows as info on the stack's row.
import * as path from "node:path";
import { pathString } from "./util";

export interface Reporter {
  /** A transient progress line (rate-limited). */
  /**
   * A transient progress line. Counters ("fork 3/20") are rate-limited: within STATUS_EVERY_MS
   * only the latest is sent. A `milestone` (a step beginning: a boot, a roll batch) is sent at once,
   * never coalesced away.
   */
  status(msg: string, milestone?: boolean): void;
  /** A lasting message. */
  info(msg: string): void;
  warn(msg: string): void;
  /** Waits until every message was delivered. */
  flush(): Promise<void>;
}

const SEVERITY = { info: 1, warn: 2 } as const;
const STATUS_EVERY_MS = 500;

interface EngineLink {
  client: any;
  proto: any;
  broken: boolean;
}

let link: EngineLink | undefined | null;

/** The engine address the dynamic-provider host was started with, if this process is one. */
export function engineAddress(argv = process.argv, env = process.env): string | undefined {
  if (env.FORKVM_PULUMI_ENGINE) return env.FORKVM_PULUMI_ENGINE;
  const i = argv.findIndex((a) => /[\\/]cmd[\\/]dynamic-provider([\\/]index(\.js)?)?$/.test(a));
  // The CLI may put flags (-v=9, --logtostderr, --tracing ...) before the address.
  return i >= 0 ? argv.slice(i + 1).find((a) => /^[\w.-]+:\d+$/.test(a)) : undefined;
}

function engineLink(): EngineLink | undefined {
  if (link !== undefined) return link ?? undefined;
  const addr = engineAddress();
  if (!addr) {
    link = null;
    return undefined;
  }
  try {
    const grpc = require("@grpc/grpc-js");
    const services = require("@pulumi/pulumi/proto/engine_grpc_pb");
    const proto = require("@pulumi/pulumi/proto/engine_pb");
    link = { client: new services.EngineClient(addr, grpc.credentials.createInsecure()), proto, broken: false };
  } catch {
    link = null;
  }
  return link ?? undefined;
}

/**
 * A reporter for one resource; `label` prefixes stderr lines. Every message (status, info, warn)
 * has each of `secrets` replaced by [secret] before it leaves the process (see `redact`).
 */
export function reporter(
  urn: string | undefined,
  label: string,
  stderr: (line: string) => void = (l) => process.stderr.write(`${l}\n`),
  secrets: readonly string[] = [],
): Reporter {
  const clean = redactor(secrets);
  let chain: Promise<void> = Promise.resolve();
  let lastStatus = 0;
  let pendingStatus: string | undefined;
  let timer: NodeJS.Timeout | undefined;

  const toStderr = (sev: "info" | "warn" | "status", msg: string) => stderr(clean(`forkvm ${label}: ${sev === "warn" ? "warning: " : ""}${msg}`));

  const send = (sev: "info" | "warn", raw: string, ephemeral: boolean) => {
    const msg = clean(raw);
    const l = urn ? engineLink() : undefined;
    if (!l || l.broken) {
      toStderr(ephemeral ? "status" : sev, msg);
      return;
    }
    chain = chain.then(
      () =>
        new Promise<void>((resolve) => {
          const req = new l.proto.LogRequest();
          req.setSeverity(SEVERITY[sev]);
          req.setMessage(msg);
          req.setUrn(urn);
          req.setEphemeral(ephemeral);
          l.client.log(req, { deadline: Date.now() + 2000 }, (err: Error | null) => {
            if (err) {
              l.broken = true;
              toStderr(ephemeral ? "status" : sev, msg);
            }
            resolve();
          });
        }),
    );
  };

  const flushStatus = () => {
    timer = undefined;
    if (pendingStatus === undefined) return;
    const msg = pendingStatus;
    pendingStatus = undefined;
    lastStatus = Date.now();
    send("info", msg, true);
  };

  return {
    status(msg, milestone = false) {
      if (milestone) {
        // What was pending goes first, then the milestone, both now.
        if (timer) { clearTimeout(timer); timer = undefined; }
        flushStatus();
      }
      pendingStatus = msg;
      const wait = lastStatus + STATUS_EVERY_MS - Date.now();
      if (milestone || wait <= 0) flushStatus();
      else if (!timer) timer = setTimeout(flushStatus, wait);
    },
    // A lasting message goes after the progress line that preceded it, never before.
    info(msg) {
      if (timer) clearTimeout(timer);
      flushStatus();
      send("info", msg, false);
    },
    warn(msg) {
      if (timer) clearTimeout(timer);
      flushStatus();
      send("warn", msg, false);
    },
    async flush() {
      if (timer) clearTimeout(timer);
      flushStatus();
      await chain;
    },
  };
}

/** The short label of a resource for stderr lines: its type and name from the URN. */
export function labelOf(urn: string | undefined, fallback: string): string {
  if (!urn) return fallback;
  const parts = urn.split("::");
  const type = path.basename((parts[2] ?? "").split("$").pop() ?? "").split(":").pop();
  return `${type ?? "resource"} ${parts[3] ?? fallback}`;
}

/** A reporter for the resource whose inputs or outputs are `props`: its URN, its label, its secrets. */
export function reporterFor(props: Record<string, unknown> | Array<Record<string, unknown>>, fallbackLabel: string): Reporter {
  const all = Array.isArray(props) ? props : [props];
  const urn = all.map((p) => p.__urn).find((u): u is string => typeof u === "string");
  return reporter(urn, labelOf(urn, fallbackLabel), undefined, all.flatMap((p) => secretValues(p)));
}

// ---------------------------------------------------------------------------------------------
// Secrets. Pulumi's dynamic-provider host answers Configure with acceptSecrets: false, so the
// engine hands a dynamic provider every input as a plain value, secret or not. The SDK therefore
// lists where the secrets are (`__secrets`: the paths of inputs that were Pulumi secrets) and the
// providers keep those values out of everything they say.

/** What a secret reads as in a message. */
export const REDACTED = "[secret]";

type Path = Array<string | number>;

function at(v: unknown, path: Path): unknown {
  let o: any = v;
  for (const p of path) {
    // A path comes from the hidden __secrets input: only strings and numbers are keys.
    if (o === null || typeof o !== "object" || (typeof p !== "string" && typeof p !== "number")) return undefined;
    o = o[p];
  }
  return o;
}

function strings(v: unknown): string[] {
  if (typeof v === "string") return [v];
  if (typeof v === "number" || typeof v === "bigint") return [String(v)];
  if (Array.isArray(v)) return v.flatMap(strings);
  if (v && typeof v === "object") return Object.values(v).flatMap(strings);
  return [];
}

/**
 * The secret values of a resource: every string (and number) at or under one of the paths in
 * `props.__secrets`, e.g. [["init", 1]] or [["metadata", "TOKEN"]] or [["init"]] (a whole input).
 * Works on inputs and on outputs (outputs carry the inputs, `__secrets` included). Empty values
 * are not secrets worth redacting.
 */
export function secretValues(props: Record<string, unknown> | undefined): string[] {
  const paths = props?.__secrets;
  if (!Array.isArray(paths)) return [];
  const out = new Set<string>();
  for (const p of paths) {
    if (!Array.isArray(p)) continue;
    for (const s of strings(at(props, p as Path))) if (s !== "") out.add(s);
  }
  return [...out];
}

/**
 * The forms a secret takes in messages: as written; as JSON (or `JSON.stringify` in a message)
 * escapes it; as a POSIX single-quoted shell word; and each line of a multi-line secret alone
 * (an error may quote one line of a script). Longest first, so a longer form is never half-replaced.
 */
function needles(secrets: readonly string[]): string[] {
  const out = new Set<string>();
  for (const s of secrets) {
    if (!s) continue;
    out.add(s);
    out.add(JSON.stringify(s).slice(1, -1));
    out.add(s.replace(/'/g, "'\\''"));
    if (s.includes("\n")) for (const line of s.split("\n").map((l) => l.trim())) if (line.length >= 4) out.add(line);
  }
  return [...out].filter(Boolean).sort((a, b) => b.length - a.length);
}

/** A function that redacts `secrets` from a text (see `redact`); the identity when there are none. */
export function redactor(secrets: readonly string[]): (text: string) => string {
  const list = needles(secrets);
  if (!list.length) return (text) => text;
  return (text) => {
    let out = text;
    for (const n of list) if (out.includes(n)) out = out.split(n).join(REDACTED);
    return out;
  };
}

/** `text` with every occurrence of each secret (in each form `needles` lists) replaced by [secret]. */
export function redact(text: string, secrets: readonly string[]): string {
  return redactor(secrets)(text);
}

/** The `__secrets` paths of `props` as the engine names fields in error details: init[1], metadata.TOKEN. */
export function secretFields(props: Record<string, unknown> | undefined): string[] {
  const paths = props?.__secrets;
  return Array.isArray(paths) ? paths.filter(Array.isArray).map((p) => pathString(p as Path)) : [];
}

function under(field: string, fields: readonly string[]): boolean {
  return fields.some((f) => field === f || field.startsWith(`${f}.`) || field.startsWith(`${f}[`));
}

/** What a failed secret command printed: whole, as the engine quotes it (its last 500 characters), and line by line. */
function outputOf(details: Record<string, unknown>): string[] {
  const out: string[] = [];
  for (const k of ["stderr", "stdout"]) {
    const v = details[k];
    const text = typeof v === "string" ? v.trim() : Buffer.isBuffer(v) ? v.toString().trim() : "";
    if (!text) continue;
    out.push(text, text.slice(-500), ...text.split("\n").map((l) => l.trim()).filter(Boolean));
  }
  return out;
}

function chain(err: unknown): Error[] {
  const out: Error[] = [];
  for (let e = err; e instanceof Error && !out.includes(e); e = (e as { cause?: unknown }).cause) out.push(e);
  return out;
}

/**
 * Redacts a thrown value in place and returns it: an Error's message and stack (the host prints
 * the stack of a failed Check, Diff, Read or Delete; the CLI shows the message), a partial
 * failure's `reasons`, a ForkvmError's string `details`, and the same down its chain of causes.
 * When an error's `details.field` is one of `fields` (or under one), e.g. a secret init command
 * that failed, what that command printed (`details.stderr`/`stdout`) is withheld as well: the
 * output of a secret command may quote it. A thrown non-Error becomes an Error with the redacted text.
 */
export function redactError<E>(err: E, secrets: readonly string[], fields: readonly string[] = []): E | Error {
  const errors = chain(err);
  const extra = errors.flatMap((e) => {
    const details = (e as { details?: unknown }).details as Record<string, unknown> | undefined;
    return details && typeof details.field === "string" && under(details.field, fields) ? outputOf(details) : [];
  });
  const all = [...secrets, ...extra];
  if (!all.length) return err;
  const clean = redactor(all);
  if (!(err instanceof Error)) return new Error(clean(String(err)));
  for (const e of errors) {
    const w = e as Error & { reasons?: unknown; details?: unknown };
    w.message = clean(w.message);
    if (typeof w.stack === "string") w.stack = clean(w.stack);
    if (Array.isArray(w.reasons)) w.reasons = w.reasons.map((r) => (typeof r === "string" ? clean(r) : r));
    if (w.details && typeof w.details === "object") {
      for (const [k, v] of Object.entries(w.details)) if (typeof v === "string") (w.details as Record<string, unknown>)[k] = clean(v);
    }
  }
  return err;
}
