// Fuzz (issue 8): the one spec of every input (engine/spec.ts) through parseArgs and checkName,
// the parsers the CLI, the Engine API and the providers all go through. Random JSON values,
// mutations of valid inputs, huge strings, deep nesting and prototype-pollution keys: only a
// result or an INVALID_ARGUMENT naming a field, a result parses again to itself, and no prototype
// is polluted. Seeded: the seed is printed; FORKVM_FUZZ_SEED repeats a run.
import { test } from "uvu";
import * as assert from "uvu/assert";
import * as path from "node:path";
import type { z } from "zod";
import * as spec from "../../engine/spec";
import { ForkvmError } from "../../engine/errors";
import { copy, deep, fuzzSeed, hugeString, mutate, NASTY_STRINGS, prng, Rand, randomObject, randomValue, setOwn } from "../helpers/fuzz";

const seed = fuzzSeed("fuzz-spec");
const r = new Rand(prng(seed));
const protoBefore = Object.getOwnPropertyNames(Object.prototype).sort();
export const counts: Record<string, number> = {};

/** Valid inputs of each schema, the seeds of mutations. */
const SCHEMAS: Array<[string, z.ZodType, Array<Record<string, unknown>>]> = [
  ["create parent", spec.ParentArgs, [
    { name: "web" },
    { name: "web", memoryMiB: 256, vcpus: 2, diskMiB: 0, init: ["echo warm > /tmp/state"], forwards: [{ guest: 80, host: 8080 }, { guest: 53, proto: "udp" }], macPrefix: "52:54:00", accel: "tcg", bootTimeoutS: 60 },
    { name: "byo", kernel: "/k", initrd: "/i", cmdline: "console=ttyS0", diskImage: "/d.qcow2", nic: false },
  ]],
  ["create template", spec.TemplateArgs, [
    { name: "web-t", parent: "web" },
    { name: "web-t", parent: "web", source: "running", downtimeLimitMs: 30, quiesceTimeoutMs: 0 },
  ]],
  ["fork", spec.ForkArgs, [
    { template: "web-t" },
    { template: "web-t", count: 20, prefix: "web", persistent: true, clone: "full", concurrency: 4, forwards: [{ guest: 80 }], metadata: { ROLE: "worker" }, readyTimeoutS: 60 },
    { template: "web-t", names: ["a", "b"], hostnames: ["ha", "hb"], macs: ["52:54:00:00:00:01", "52:54:00:00:00:02"] },
    { template: "web-t", children: [{ name: "c-1", hostname: "h", mac: "52:54:00:aa:bb:cc", metadata: { K: "v" }, forwards: [{ guest: 22, host: 0 }] }] },
  ]],
  ["apply pool", spec.PoolArgs, [
    { name: "api", template: "web-t", size: 4 },
    { name: "api", template: "web-t", size: 10, persistent: true, prefix: "w", macPrefix: "52:54", metadata: { ROLE: "api-{index}", WHO: "{name}@{generation}" }, forwards: [{ guest: 80, hostBase: 9000 }], updatePolicy: { maxUnavailable: "25%" }, concurrency: 2, readyTimeoutS: 30 },
  ]],
  ["fork one child", spec.ChildSpec, [{ name: "c-1" }, { name: "c-1", hostname: "h-1", mac: "52:54:00:00:00:09", metadata: {}, forwards: [] }]],
  ["set metadata", spec.Metadata, [{ A: "1", _B: "", LONG: "x".repeat(1000) }]],
  ["forward", spec.ForwardSpec, [{ guest: 80 }, { guest: 80, host: 0, proto: "udp" }]],
  ["pool forward", spec.PoolForward, [{ guest: 80, hostBase: 9000, proto: "tcp" }]],
  ["update policy", spec.UpdatePolicy, [{ maxUnavailable: 2 }, { maxUnavailable: "100%" }]],
];

function count(k: string): void {
  counts[k] = (counts[k] ?? 0) + 1;
}

/** One hostile input for a schema whose valid inputs are `valids`. */
function hostile(valids: Array<Record<string, unknown>>): unknown {
  const v = r.pick(valids);
  const keys = Object.keys(v);
  switch (r.int(8)) {
    case 0: return randomValue(r);
    case 1: return randomObject(r, 0, keys);
    case 2: { const o = copy(v); setOwn(o, r.pick(keys.length ? keys : ["x"]), hugeString(r)); return o; }
    case 3: { const o = copy(v); setOwn(o, r.pick(keys.length ? keys : ["x"]), deep(r.pick([50, 500, 5000]), r.pick(NASTY_STRINGS), r.chance(0.5))); return o; }
    case 4: { const o = copy(v); setOwn(o, r.pick(["__proto__", "constructor", "prototype"]), r.chance(0.5) ? { polluted: "yes", name: "x" } : "x"); return json(o); }
    case 5: return json(mutate(r, v)); // what arrives over JSON (CLI, Pulumi)
    default: return mutate(r, v);
  }
}

/** A value as it arrives over JSON (the CLI's --json, Pulumi's gRPC Struct): no BigInt, Symbol or function. */
function json(v: unknown): unknown {
  const text = JSON.stringify(v, (_k, x) => (typeof x === "bigint" ? Number(x) : typeof x === "symbol" || typeof x === "function" ? undefined : x));
  return text === undefined ? null : JSON.parse(text);
}

function checkResult(schema: z.ZodType, what: string, input: unknown, out: unknown): void {
  assert.ok(out !== null && out !== undefined, `${what}: a result`);
  if (typeof out === "object") assert.ok([Object.prototype, Array.prototype].includes(Object.getPrototypeOf(out)), `${what}: a plain result`);
  // A result is valid input again, and means the same.
  assert.equal(spec.parseArgs(schema, out, what), out, `${what}: idempotent on ${safeText(input)}`);
}

/** A refusal as parseArgs makes it (checkName's carries details.field only: `withFields` false). */
function checkRefusal(what: string, input: unknown, err: unknown, withFields = true): void {
  if (!(err instanceof ForkvmError)) throw new Error(`${what}: threw ${String(err)} (not a ForkvmError) on ${safeText(input)}\n${(err as Error)?.stack ?? ""}`);
  assert.is(err.code, "INVALID_ARGUMENT", err.message);
  assert.ok(err.message.startsWith(`Cannot ${what}: `) || err.message.startsWith(`Cannot ${what} "`), err.message.slice(0, 200));
  assert.type(err.details.field, "string");
  const fields = err.details.fields as Array<{ field: string; message: string }>;
  if (withFields) assert.ok(Array.isArray(fields) && fields.length > 0 && fields.every((f) => typeof f.field === "string" && typeof f.message === "string"));
}

function safeText(v: unknown): string {
  try {
    const s = JSON.stringify(v, (_k, x) => (typeof x === "bigint" ? `${x}n` : typeof x === "symbol" ? String(x) : x));
    return s === undefined ? String(v) : s.length > 300 ? `${s.slice(0, 300)}…` : s;
  } catch {
    return Object.prototype.toString.call(v);
  }
}

test("every schema: hostile inputs give a result that parses again to itself, or INVALID_ARGUMENT naming a field", () => {
  const t0 = Date.now();
  const PER_SCHEMA = 2000;
  let ok = 0, refused = 0;
  for (const [what, schema, valids] of SCHEMAS) {
    for (const v of valids) checkResult(schema, what, v, spec.parseArgs(schema, v, what)); // the seeds are valid
    for (let i = 0; i < PER_SCHEMA; i++) {
      const input = hostile(valids);
      let out: unknown;
      try {
        out = spec.parseArgs(schema, input, what);
      } catch (err) {
        checkRefusal(what, input, err);
        refused++;
        count("spec");
        continue;
      }
      checkResult(schema, what, input, out);
      ok++;
      count("spec");
    }
  }
  console.log(`  ${ok + refused} hostile spec inputs: ${ok} accepted, ${refused} refused, ${Date.now() - t0} ms`);
  assert.ok(ok > 50 && refused > 1000, `both outcomes are exercised (${ok} ok, ${refused} refused)`);
});

test("checkName: only names matching the rule pass, and a name that passes is one directory entry, never a path", () => {
  const home = "/srv/forkvm/home";
  const alphabet = "abcz09-._/\\ \0\nA~%é";
  let passed = 0;
  for (let i = 0; i < 3000; i++) {
    const name = r.chance(0.3) ? r.pick(NASTY_STRINGS) : r.chance(0.5)
      ? Array.from({ length: r.int(70) }, () => alphabet[r.int(alphabet.length)]).join("")
      : r.pick(["..", ".", "/", "a", "-", "x".repeat(60)]).repeat(1 + r.int(3)) + r.pick(["", "/", "..", "\n", "1"]);
    let ok: string | undefined;
    try {
      ok = spec.checkName(name, "name", "use");
    } catch (err) {
      checkRefusal("use", name, err, false);
      assert.not.ok(spec.NAME_RE.test(name), `refused a valid name ${JSON.stringify(name)}`);
      count("checkName");
      continue;
    }
    passed++;
    count("checkName");
    assert.ok(spec.NAME_RE.test(ok) && ok === name);
    const dir = path.join(home, "vms", ok);
    assert.is(path.dirname(dir), path.join(home, "vms"), `${JSON.stringify(name)} is one entry`);
    assert.ok(!["", ".", ".."].includes(ok) && !ok.includes("/") && !ok.includes("\0"));
  }
  // (Not 10n: checkName(10n) throws JSON.stringify's TypeError, reported; no JSON input is a BigInt.)
  for (const v of [undefined, null, 1, {}, [], ["web"], true, Symbol("web")]) {
    assert.throws(() => spec.checkName(v), (e: unknown) => e instanceof ForkvmError && e.code === "INVALID_ARGUMENT");
    count("checkName");
  }
  assert.ok(passed > 100, `${passed} names passed`);
});

test("nothing polluted Object.prototype", () => {
  assert.equal(Object.getOwnPropertyNames(Object.prototype).sort(), protoBefore);
  assert.is(({} as Record<string, unknown>).polluted, undefined);
  const total = Object.values(counts).reduce((a, b) => a + b, 0);
  console.log(`  fuzz-spec: ${total} inputs (${Object.entries(counts).map(([k, n]) => `${k} ${n}`).join(", ")}), seed ${seed}`);
});

test.run();
