// The guest agent's wire protocol, host side, as engine/guest/PROTOCOL.md defines it: request
// encoding, the fields a request may carry (hostnames, MACs, machine ids: validated here only),
// and the reply parser. Every reply is hostile input: parsed in linear time, never by a regex
// over unbounded text, and every failure is a ForkvmError (AGENT or INVALID_ARGUMENT).
import { randomBytes } from "node:crypto";
import { z } from "zod";
import { ForkvmError } from "../errors";
import { MAC_RE } from "../spec";

/** The agent version this host was written against (PROTOCOL.md, "Versioning"). */
export const AGENT_VERSION = "1";

/** Default cap on one reply line of ping and identity (PROTOCOL.md, "Size limits"). */
export const DEFAULT_MAX_REPLY_BYTES = 4 * 1024 * 1024;
/** Default cap on one reply line of exec: base64 of stdout + stderr, ~48 MiB of output. */
export const DEFAULT_MAX_EXEC_REPLY_BYTES = 64 * 1024 * 1024;
/** Longest id, on either side. */
export const MAX_ID_LENGTH = 64;
/** Most characters of an agent's error message kept in the host's error. */
const MAX_MESSAGE_CHARS = 2000;

// ---------------------------------------------------------------------------------------------
// Fields

const LABEL_RE = /^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/;
const MACHINE_ID_RE = /^[0-9a-f]{32}$/;
const ID_RE = /^[A-Za-z0-9_-]+$/;

/** A DNS host name: dot-separated labels of letters, digits and inner hyphens, 1-253 chars. */
export function isHostname(s: unknown): s is string {
  return typeof s === "string" && s.length >= 1 && s.length <= 253 && s.split(".").every((l) => LABEL_RE.test(l));
}

/** Six hex octets separated by ':' (either case). */
export function isMac(s: unknown): s is string {
  // The engine's one MAC rule (engine/spec.ts); the protocol also takes upper case and lowers it.
  return typeof s === "string" && s.length === 17 && MAC_RE.test(s.toLowerCase());
}

/** What /etc/machine-id holds: 32 lowercase hex digits. */
export function isMachineId(s: unknown): s is string {
  return typeof s === "string" && s.length === 32 && MACHINE_ID_RE.test(s);
}

/** A fresh request id: 12 characters of base64url (72 random bits). */
export function newId(): string {
  return randomBytes(9).toString("base64url");
}

// ---------------------------------------------------------------------------------------------
// Base64: the standard alphabet, padded, no line breaks; "-" is the empty value.

/** Encodes bytes or text as a protocol word: base64, "-" for empty. */
export function b64(data: Buffer | string): string {
  const s = Buffer.from(data).toString("base64");
  return s === "" ? "-" : s;
}

const B64_CHAR = new Uint8Array(128);
for (const c of "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/") B64_CHAR[c.charCodeAt(0)] = 1;

/** True when `s` is "-" or strict padded base64 (one pass over the characters, no regex). */
export function isB64Word(s: string): boolean {
  if (s === "-") return true;
  const n = s.length;
  if (n === 0 || n % 4 !== 0) return false;
  let end = n;
  if (s.charCodeAt(n - 1) === 61) end = s.charCodeAt(n - 2) === 61 ? n - 2 : n - 1;
  for (let i = 0; i < end; i++) {
    const c = s.charCodeAt(i);
    if (c >= 128 || B64_CHAR[c] !== 1) return false;
  }
  return true;
}

/** Decodes a protocol word (see isB64Word); throws AGENT (reason "malformed") when invalid. */
export function unb64(s: string): Buffer {
  if (!isB64Word(s)) throw malformed("a field is not base64");
  return s === "-" ? Buffer.alloc(0) : Buffer.from(s, "base64");
}

const B64Word = z.string().refine(isB64Word, "not base64");

// ---------------------------------------------------------------------------------------------
// Operations: what a request carries and what its "ok" reply holds.

/** One operation: its request words after the op name, and the decoder of its "ok" fields. */
export interface AgentOp<Req, Res> {
  readonly name: string;
  /** Fields an "ok" reply has; anything after them makes the reply malformed. */
  readonly fields: number;
  /** The request's words after the op name. Throws INVALID_ARGUMENT naming the field. */
  encode(req: Req): string[];
  /** The result from the "ok" fields. Throws AGENT (reason "malformed"). */
  decode(fields: string[]): Res;
}

export interface ExecRequest {
  argv: string[];
  stdin?: Buffer | string;
  /** The guest kills the command after this many ms, rounded up to seconds; 0 = never. */
  timeoutMs: number;
}

export interface ExecResult {
  exitCode: number;
  stdout: Buffer;
  stderr: Buffer;
}

export interface Identity {
  hostname: string;
  mac: string;
  /** Defaults to now; fractions are dropped. */
  epochSeconds?: number;
  /** Bytes written to the guest's /dev/urandom; defaults to 64 random bytes. */
  seed?: Buffer;
  /** 32 lowercase hex digits for /etc/machine-id; defaults to a random one. */
  machineId?: string;
}

const PingFields = z.tuple([z.literal("pong"), z.string().max(MAX_ID_LENGTH).regex(/^[A-Za-z0-9._-]+$/)]);
const ExecFields = z.tuple([z.string().max(3).regex(/^\d{1,3}$/), B64Word, B64Word]);

function invalid(what: string, field: string, why: string): ForkvmError {
  return new ForkvmError("INVALID_ARGUMENT", `Cannot ${what}: ${why}`, { details: { field } });
}

/** ping → "pong <version>". */
export const PING: AgentOp<void, string> = {
  name: "ping",
  fields: 2,
  encode: () => [],
  decode: (fields) => fromZod(PingFields, fields)[1],
};

/** exec <timeoutSec> <b64 stdin|-> <b64 argv0> [<b64 arg>...] → "<exitCode> <b64 stdout> <b64 stderr>". */
export const EXEC: AgentOp<ExecRequest, ExecResult> = {
  name: "exec",
  fields: 3,
  encode: ({ argv, stdin, timeoutMs }) => {
    const what = "exec in the guest";
    if (!Array.isArray(argv) || argv.length === 0 || !argv[0]) throw invalid(what, "argv", "argv must be a non-empty array with a command first");
    if (argv.some((a) => typeof a !== "string" || a.includes("\0"))) throw invalid(what, "argv", "argv entries must be strings without NUL bytes");
    if (typeof timeoutMs !== "number" || !Number.isFinite(timeoutMs) || timeoutMs < 0) throw invalid(what, "timeoutMs", `timeoutMs must be >= 0, got ${timeoutMs}`);
    return [String(Math.ceil(timeoutMs / 1000)), stdin === undefined ? "-" : b64(stdin), ...argv.map(b64)];
  },
  decode: (fields) => {
    const [code, out, err] = fromZod(ExecFields, fields);
    return { exitCode: Number(code), stdout: unb64(out), stderr: unb64(err) };
  },
};

/** identity <b64 hostname> <mac> <epochSeconds> <b64 seed> <machineId> → "" (no fields). */
export const IDENTITY: AgentOp<Identity, void> = {
  name: "identity",
  fields: 0,
  encode: (id) => {
    const what = "set the guest identity";
    if (!isHostname(id.hostname)) throw invalid(what, "hostname", `hostname ${JSON.stringify(id.hostname)} is not a valid host name`);
    if (!isMac(id.mac)) throw invalid(what, "mac", `mac ${JSON.stringify(id.mac)} is not xx:xx:xx:xx:xx:xx`);
    const epoch = Math.floor(id.epochSeconds ?? Date.now() / 1000);
    if (!Number.isFinite(epoch) || epoch < 0) throw invalid(what, "epochSeconds", `epochSeconds must be >= 0, got ${id.epochSeconds}`);
    const machineId = id.machineId ?? randomBytes(16).toString("hex");
    if (!isMachineId(machineId)) throw invalid(what, "machineId", "machineId must be 32 lowercase hex digits");
    const seed = id.seed ?? randomBytes(64);
    if (!Buffer.isBuffer(seed)) throw invalid(what, "seed", "seed must be a Buffer");
    return [b64(id.hostname), id.mac.toLowerCase(), String(epoch), b64(seed), machineId];
  },
  decode: () => undefined,
};

/** The request line for `op` with id `id`: a newline first (it ends any partial line), one at the end. */
export function requestLine<Req>(id: string, op: AgentOp<Req, unknown>, req: Req): string {
  return `\n${[id, op.name, ...op.encode(req)].join(" ")}\n`;
}

// ---------------------------------------------------------------------------------------------
// Replies

/**
 * The id of a reply line (its first word), or undefined when it has none that could be one.
 * Looks at most MAX_ID_LENGTH + 1 bytes, so it is cheap on any line and on an overlong line's head.
 */
export function replyId(line: Buffer): string | undefined {
  const sp = line.subarray(0, MAX_ID_LENGTH + 1).indexOf(32);
  const id = (sp < 0 ? line.subarray(0, MAX_ID_LENGTH + 1) : line.subarray(0, sp)).toString("latin1");
  return id.length >= 1 && id.length <= MAX_ID_LENGTH && ID_RE.test(id) ? id : undefined;
}

/**
 * Parses a reply line (already known to carry the call's id) into `op`'s result. Throws AGENT,
 * with details.reason "agent-error" when the agent reports an error (its message, made
 * printable and shortened, is the error's message) or "malformed" otherwise.
 */
export function parseReply<Res>(line: Buffer, op: AgentOp<never, Res>): Res {
  const text = line.toString("latin1");
  // id, status, then at most op.fields (or 1 for err) words; the rest stays in the last one.
  const words = splitWords(text, 2 + Math.max(op.fields, 1));
  const status = words[1];
  if (status === "err") {
    if (words.length !== 3) throw malformed(`an error reply has ${words.length - 2} fields, not 1`, text);
    const enc = words[2]!;
    if (!isB64Word(enc)) throw malformed("the error message is not base64", text);
    // Decode only what is kept (up to 4 bytes a character), in whole 4-character quanta.
    const keep = enc === "-" ? "" : enc.slice(0, Math.ceil((MAX_MESSAGE_CHARS * 4) / 3) * 4);
    const msg = printable(Buffer.from(keep, "base64").toString("utf8"), MAX_MESSAGE_CHARS) || "unknown error";
    const cut = enc.length > keep.length ? ` (${Math.floor((enc.length * 3) / 4)} bytes in all)` : "";
    throw new ForkvmError("AGENT", `${msg}${cut}`, { details: { reason: "agent-error" } });
  }
  if (status !== "ok") throw malformed(`status "${printable(status ?? "", 20)}" is neither ok nor err`, text);
  const fields = words.slice(2);
  if (fields.length !== op.fields) throw malformed(`expected ${op.fields} fields, got ${fields.length}`, text);
  return op.decode(fields);
}

/** Splits at single spaces into at most `limit` words, the last holding the rest (linear). */
export function splitWords(s: string, limit: number): string[] {
  const out: string[] = [];
  let start = 0;
  while (out.length < limit - 1) {
    const sp = s.indexOf(" ", start);
    if (sp < 0) break;
    out.push(s.slice(start, sp));
    start = sp + 1;
  }
  out.push(s.slice(start));
  return out;
}

/** Text safe to show in a terminal or a log: control characters escaped, at most `max` chars. */
export function printable(s: string, max: number): string {
  const cut = s.length > max ? `${s.slice(0, max)}…` : s;
  return cut.replace(/[\u0000-\u001f\u007f-\u009f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`);
}

function malformed(why: string, text?: string): ForkvmError {
  const head = text === undefined ? "" : ` in "${printable(text, 80)}"`;
  return new ForkvmError("AGENT", `malformed reply: ${why}${head}`, { details: { reason: "malformed" } });
}

function fromZod<T>(schema: z.ZodType<T>, fields: string[]): T {
  const r = schema.safeParse(fields);
  if (r.success) return r.data;
  const issue = r.error.issues[0];
  throw malformed(issue ? `field ${Number(issue.path[0] ?? 0) + 1}: ${issue.message}` : "invalid fields");
}
