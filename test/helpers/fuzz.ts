// What the fuzz, names and soak suites share: a seeded PRNG (the seed is printed, and
// FORKVM_FUZZ_SEED replays a run), hostile values (random JSON, mutations of valid inputs, huge
// strings, deep nesting, prototype-pollution keys), and a checksummed canary tree.
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import type { Store } from "../../engine/state/store";
import type { VmManifest } from "../../engine/state/manifest";

/** mulberry32: a small seeded PRNG, values in [0, 1). */
export function prng(seed: number): () => number {
  let s = seed | 0;
  return () => {
    s = (s + 0x6d2b79f5) | 0;
    let t = Math.imul(s ^ (s >>> 15), 1 | s);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** The run's seed: FORKVM_FUZZ_SEED, else a fresh one; printed with `what` so a failure repeats. */
export function fuzzSeed(what: string): number {
  const given = process.env.FORKVM_FUZZ_SEED;
  const seed = given !== undefined && given !== "" ? Number(given) >>> 0 : (Date.now() ^ (process.pid << 16)) >>> 0;
  console.log(`  ${what}: seed ${seed} (repeat with FORKVM_FUZZ_SEED=${seed})`);
  return seed;
}

/** Helpers over one PRNG. */
export class Rand {
  constructor(readonly next: () => number) {}
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)]!;
  }
  bytes(n: number): Buffer {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = this.int(256);
    return b;
  }
}

/** Strings that break naive code: paths, control characters, unicode, shell and format syntax. */
export const NASTY_STRINGS: readonly string[] = [
  "", " ", ".", "..", "../../..", "/", "/etc", "/etc/passwd", "a/b", "web/../x", "./web", "web/", "\\", "..\\..",
  "\0", "a\0b", "\n", "web\n", "a b", "\t", "\r\n", "\u001b[31m", "\u202e", "é", "ﬁ", "Ａ", "💥", "\ud800",
  "__proto__", "constructor", "prototype", "toString", "hasOwnProperty", "valueOf",
  "$(reboot)", "`id`", "'", "\"", "%s%n", "{name}", "{nope}", "${HOME}", "*", "-", "--", "-x", "--help",
  "web", "web-1", "Web", "WEB", "x".repeat(63), "x".repeat(64), "a-".repeat(40), "0", "-1", "1e309", "NaN",
  "FORKVM_POOL", "A", "_", "52:54:00", "52:54:00:aa:bb:cc", "zz:zz", "25%", "0%", "101%", "100%",
  "frozen", "running", "linked", "full", "tcg", "kvm", "auto", "tcp", "udp", "default",
];

/** Numbers at and past every edge a spec might have. */
export const NASTY_NUMBERS: readonly number[] = [
  0, -0, 1, -1, 2, 31, 32, 63, 64, 65, 127, 128, 255, 256, 1024, 3600, 3601, 9999, 10_000, 10_001, 60_000, 65_535, 65_536,
  1024 * 1024, 67_108_864, 67_108_865, 2 ** 31, 2 ** 32, Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER + 2, 1e308,
  Number.MIN_VALUE, 0.5, 1.5, -1.5, NaN, Infinity, -Infinity,
];

/** Keys that pollute prototypes when a parser copies objects carelessly. */
export const PROTO_KEYS: readonly string[] = ["__proto__", "constructor", "prototype", "__defineGetter__", "toString", "valueOf", "hasOwnProperty"];

/** Sets an own property, even "__proto__" (an object literal or `o[k] =` would set the prototype instead). */
export function setOwn(o: Record<string, unknown>, k: string, v: unknown): void {
  Object.defineProperty(o, k, { value: v, enumerable: true, writable: true, configurable: true });
}

export function hugeString(r: Rand): string {
  return r.pick(["x", "a-", "\0", "é", "/..", "A"]).repeat(r.pick([1024, 65_536, 1_048_576]));
}

/** A value nested `depth` levels deep (arrays or objects). */
export function deep(depth: number, leaf: unknown = 1, asObject = false): unknown {
  let v = leaf;
  for (let i = 0; i < depth; i++) v = asObject ? { a: v } : [v];
  return v;
}

/** A random JSON-ish value: every type, nasty strings and numbers, prototype keys, some depth. */
export function randomValue(r: Rand, depth = 0): unknown {
  const roll = r.int(depth > 3 ? 6 : 10);
  switch (roll) {
    case 0: return r.pick([null, undefined, true, false]);
    case 1: case 2: return r.pick(NASTY_NUMBERS);
    case 3: case 4: return r.pick(NASTY_STRINGS);
    case 5: return r.chance(0.05) ? hugeString(r) : r.bytes(r.int(12)).toString("latin1");
    case 6: case 7: return Array.from({ length: r.int(4) }, () => randomValue(r, depth + 1));
    case 8: return randomObject(r, depth + 1);
    default: return r.chance(0.5) ? deep(r.pick([10, 100, 1000]), randomValue(r, 4), r.chance(0.5)) : r.pick([() => 1, Symbol("s"), 10n, new Date(0), /x/]);
  }
}

export function randomObject(r: Rand, depth = 0, keys: readonly string[] = []): Record<string, unknown> {
  const o: Record<string, unknown> = {};
  for (let i = r.int(5); i > 0; i--) {
    const k = r.chance(0.3) ? r.pick(PROTO_KEYS) : r.chance(0.5) && keys.length ? r.pick(keys) : r.pick(NASTY_STRINGS);
    setOwn(o, k, randomValue(r, depth + 1));
  }
  return o;
}

/** A deep copy of plain JSON data (own "__proto__" keys kept as data). */
export function copy<T>(v: T): T {
  if (Array.isArray(v)) return v.map(copy) as T;
  if (v && typeof v === "object" && Object.getPrototypeOf(v) === Object.prototype) {
    const o: Record<string, unknown> = {};
    for (const k of Object.keys(v)) setOwn(o, k, copy((v as Record<string, unknown>)[k]));
    return o as T;
  }
  return v;
}

/** JSON text of any value (BigInt as a number; Symbols and functions dropped, as JSON drops undefined). */
export function jsonText(v: unknown): string {
  return JSON.stringify(v, (_k, x) => (typeof x === "bigint" ? Number(x) : typeof x === "symbol" || typeof x === "function" ? undefined : x)) ?? "null";
}

/** A mutation of a valid input: one to three edits (replace, delete, add an unknown or prototype key, retype, nest). */
export function mutate(r: Rand, valid: Record<string, unknown>): Record<string, unknown> {
  const out = copy(valid);
  for (let n = 1 + r.int(3); n > 0; n--) {
    // Walk to a random container inside `out`.
    let at: any = out;
    for (let d = r.int(3); d > 0; d--) {
      const keys = Object.keys(at);
      const k = keys.length ? r.pick(keys) : undefined;
      if (k === undefined || !at[k] || typeof at[k] !== "object") break;
      at = at[k];
    }
    const keys = Object.keys(at);
    const k = keys.length ? r.pick(keys) : Array.isArray(at) ? "0" : "x";
    const op = r.int(7);
    if (Array.isArray(at) && (op === 1 || op === 2)) { at.push(randomValue(r, 2)); continue; } // arrays get elements, not keys
    switch (op) {
      case 0: if (Array.isArray(at)) at.splice(Number(k), 1); else delete at[k]; break;
      case 1: setOwn(at, r.pick(PROTO_KEYS), randomValue(r, 2)); break;
      case 2: setOwn(at, r.pick(NASTY_STRINGS), randomValue(r, 2)); break;
      case 3: at[k] = r.pick(NASTY_STRINGS); break;
      case 4: at[k] = r.pick(NASTY_NUMBERS); break;
      case 5: at[k] = r.chance(0.5) ? [at[k], at[k]] : { v: at[k] }; break;
      default: at[k] = randomValue(r, 1); break;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// The canary tree: files around a state directory that no operation may touch.

export interface Canary {
  /** The top of the tree (e.g. <tmp>/x); the home is somewhere under it. */
  root: string;
  /** Digest of the tree now: path → type, mode, size, mtime, sha256 (or link target). */
  digest(): Map<string, string>;
  /** The paths that differ from `before` (added, removed or changed), empty when nothing did. */
  changes(before: Map<string, string>): string[];
}

/**
 * Plants canary files (and lures shaped like state: vms/, templates/, manifest.json) in `root`
 * and in every directory on the way down to `home` (which it does not create), and in siblings of
 * `home`. `exclude` names paths under `root` that may change (the home itself, a memory dir).
 */
export function plantCanary(root: string, home: string, exclude: string[] = []): Canary {
  const rel = path.relative(root, home);
  if (rel.startsWith("..") || path.isAbsolute(rel)) throw new Error(`${home} is not under ${root}`);
  const dirs = [root];
  for (const part of path.dirname(rel).split(path.sep).filter((p) => p && p !== ".")) dirs.push(path.join(dirs.at(-1)!, part));
  const plant = (file: string, content: string | Buffer) => {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, content);
  };
  for (const [i, d] of dirs.entries()) {
    plant(path.join(d, "canary.txt"), `canary ${i}\n`);
    plant(path.join(d, "vms", "web", "manifest.json"), `{"canary": ${i}}\n`);
    plant(path.join(d, "templates", "t", "state.bin"), Buffer.alloc(1024, i));
    plant(path.join(d, "pools", "p", "manifest.json"), "{}\n");
    plant(path.join(d, "vms-web.mem"), Buffer.alloc(4096, 7));
  }
  const parent = path.dirname(home);
  plant(path.join(parent, "sibling", "keep.txt"), "sibling of the home\n");
  plant(path.join(parent, "sibling", "deep", "er", "keep.bin"), Buffer.alloc(2048, 1));
  plant(path.join(parent, `${path.basename(home)}-other`, "vms", "x", "manifest.json"), "{}\n");
  fs.symlinkSync(path.join(parent, "sibling"), path.join(parent, "link-to-sibling"));
  const skip = new Set(exclude.map((e) => path.resolve(e)));
  const walk = (dir: string, out: Map<string, string>) => {
    for (const name of fs.readdirSync(dir).sort()) {
      const p = path.join(dir, name);
      if (skip.has(p)) continue;
      const st = fs.lstatSync(p);
      const head = `${st.mode.toString(8)} ${st.uid}`;
      if (st.isSymbolicLink()) out.set(p, `link ${head} ${fs.readlinkSync(p)}`);
      else if (st.isDirectory()) { out.set(p, `dir ${head}`); walk(p, out); }
      // (Files over 8 MiB, such as sparse memory images, by size, inode and mtime: hashing them costs seconds.)
      else if (st.isFile()) out.set(p, `file ${head} ${st.size} ${st.mtimeMs} ${st.size > 8 << 20 ? `ino ${st.ino}` : createHash("sha256").update(fs.readFileSync(p)).digest("hex")}`);
      else out.set(p, `other ${head}`);
    }
    return out;
  };
  const digest = () => walk(root, new Map());
  return {
    root,
    digest,
    changes: (before) => {
      const now = digest();
      const out: string[] = [];
      for (const [p, d] of before) if (now.get(p) !== d) out.push(`${now.has(p) ? "changed" : "removed"} ${p}`);
      for (const p of now.keys()) if (!before.has(p)) out.push(`added ${p}`);
      return out;
    },
  };
}

/** A fresh scratch directory for one suite (under FORKVM_TEST_HOME when test/run.ts gave one). */
export function scratch(prefix: string): string {
  return fs.mkdtempSync(path.join(process.env.FORKVM_TEST_HOME ?? os.tmpdir(), `${prefix}-`));
}

/**
 * The layout the hostile suites share: a scratch dir with a canary tree around `<tmp>/x/a/b/home`
 * and `<tmp>/x/a/b/mem` (`exclude` as plantCanary takes it); with `env`, FORKVM_HOME and
 * FORKVM_MEMDIR point there.
 */
export function canaryWorld(tag: string, opts: { env?: boolean; exclude?: string[] } = {}): { tmp: string; x: string; home: string; memDir: string; canary: Canary } {
  const tmp = scratch(tag);
  const x = path.join(tmp, "x");
  const home = path.join(x, "a", "b", "home");
  const memDir = path.join(x, "a", "b", "mem");
  if (opts.env) {
    process.env.FORKVM_HOME = home;
    process.env.FORKVM_MEMDIR = memDir;
  }
  const canary = plantCanary(x, home, opts.exclude?.map((e) => (e === "home" ? home : e === "mem" ? memDir : e)));
  return { tmp, x, home, memDir, canary };
}

// ---------------------------------------------------------------------------------------------
// A home with objects in it (no QEMU): what hostile calls must leave alone.

const SHAPE = { accel: "tcg" as const, machine: "pc-i440fx-7.2", memoryMiB: 128, vcpus: 1, kernel: "/nonexistent/k", initrd: "/nonexistent/i", cmdline: "", disk: false, nic: false };

/**
 * Writes, through the store, a stopped parent `par`, a whole template `t` of it (a sparse memory
 * image, a checkpoint matching its checksum), a stopped child `v` of `t` and an empty pool `pl`.
 */
export function seedHome(s: Store): void {
  s.init();
  const at = "2026-01-01T00:00:00.000Z";
  const vm = (name: string, extra: Partial<VmManifest>): VmManifest => ({
    version: 1, kind: "vm", name, role: "parent", createdAt: at, state: "stopped", shape: SHAPE, token: "0123456789ab",
    memoryPath: s.memoryPath("vms", name), mac: "52:54:00:00:00:01", hostname: name, forwards: [], startedBy: "boot", ...extra,
  });
  s.reserve("vms", "par");
  s.writeVm(vm("par", {}));
  s.reserve("templates", "t");
  const state = path.join(s.dir("templates", "t"), "state.bin");
  fs.writeFileSync(state, "checkpoint");
  const mem = s.memoryPath("templates", "t");
  fs.writeFileSync(mem, "");
  fs.truncateSync(mem, SHAPE.memoryMiB * 1048576);
  s.writeTemplate({
    version: 1, kind: "template", name: "t", generation: "g1", createdAt: at, source: "frozen", parent: "par", shape: SHAPE,
    memoryPath: mem, statePath: state, stateBytes: 10, stateSha256: createHash("sha256").update("checkpoint").digest("hex"),
    parentMac: "52:54:00:00:00:01", parentHostname: "par", timings: {},
  });
  s.reserve("vms", "v");
  s.writeVm(vm("v", { role: "child", template: { name: "t", generation: "g1" }, memoryPath: mem, startedBy: "fork" }));
  s.reserve("pools", "pl");
  s.writePool({ version: 1, kind: "pool", name: "pl", createdAt: at, updatedAt: at, children: [],
    spec: { name: "pl", template: "t", size: 0, persistent: false, metadata: {}, forwards: [], updatePolicy: { maxUnavailable: 1 }, concurrency: 4, readyTimeoutS: 60 } });
}
