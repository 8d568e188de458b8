// Fuzz (issue 8): what test/unit/agent-hostile.test.ts does not cover. There, fixed scenarios on
// real FIFOs and 5,000 hostile lines straight into the parser (x 3 ops = 15,000 parses); here:
//  1. random sequences through the real client and channel: every call of ping, exec or identity
//     meets its own plan (a right reply behind random noise, glued or split anywhere, stale and
//     look-alike ids, replies twice, late, never, an error, malformed or overlong on its own id),
//     and gets exactly its own answer (whenever it came whole) or an AGENT/TIMEOUT ForkvmError;
//  2. the host side of requests: hostile argv, stdin, timeouts and identities either encode to one
//     line of plain words (nothing a guest could read as a second request) or fail INVALID_ARGUMENT;
//  3. hostile client options.
// Seeded: FORKVM_FUZZ_SEED repeats a run.
import { test } from "uvu";
import * as assert from "uvu/assert";
import * as fs from "node:fs";
import * as path from "node:path";
import { AgentClient, createAgentFifos } from "../../engine/guest/client";
import { EXEC, IDENTITY, PING, requestLine } from "../../engine/guest/protocol";
import { ForkvmError } from "../../engine/errors";
import { deadline } from "../helpers/deadline";
import { fuzzSeed, jsonText, NASTY_NUMBERS, NASTY_STRINGS, prng, Rand, randomValue, scratch } from "../helpers/fuzz";
import { fakeGuestChannel } from "../helpers/fake-guest";

const seed = fuzzSeed("fuzz-agent");
const r = new Rand(prng(seed));
const tmp = scratch("fuzz-agent");
const uncaught: unknown[] = [];
process.on("uncaughtException", (e) => uncaught.push(e));
process.on("unhandledRejection", (e) => uncaught.push(e));

const CAP = 4096; // maxReplyBytes and maxExecReplyBytes here: small, so overlong lines are cheap
const b64 = (b: Buffer | string) => Buffer.from(b).toString("base64") || "-";
const counts = { lines: 0, calls: 0, encodes: 0, options: 0 };

type Plan = "ok" | "ok-glued" | "twice" | "err" | "malformed" | "overlong-own" | "never" | "late";
type Req = { id: string; op: string };

/** A guest on real FIFOs that answers each request with the plan the test queued for it. */
async function fakeGuest(base: string) {
  await createAgentFifos(base);
  let onRequest: (req: Req) => void = () => {};
  const ch = fakeGuestChannel(base, ({ id, op }) => onRequest({ id, op }));
  /** Writes in random pieces, as virtio-serial delivers a guest's writes. */
  const send = (data: string) => {
    const b = Buffer.from(data, "latin1");
    const small = Math.max(8, Math.ceil(b.length / 64)); // tiny pieces, but at most ~64 of them
    for (let at = 0; at < b.length; ) {
      const n = 1 + r.int(r.chance(0.5) ? small : 32_768);
      ch.write(b.subarray(at, at + n));
      at += n;
    }
  };
  return {
    send,
    set onRequest(f: (req: Req) => void) { onRequest = f; },
    close: ch.close,
  };
}

/** Noise a guest may send around a reply: never a whole line carrying the current id. */
function noise(id: string, earlier: string[]): string {
  counts.lines++;
  const stale = r.pick([...earlier, "someone", "x".repeat(64), "AbCdEfGhIjKl"]);
  switch (r.int(12)) {
    case 0: return `\n${r.bytes(r.int(300)).toString("latin1")}`;
    case 1: return `\n${stale} ok pong 1`;
    case 2: return `\n${stale} ok 0 ${b64("stale")} -`;
    case 3: return `\n${stale} err ${b64("stale error")}`;
    case 4: return `\n${id}x ok pong 1\nx${id} ok pong 1\n${id.slice(1)} ok pong 1`; // look-alikes of the current id
    case 5: return `\n${stale} ok ${"QUJD".repeat(CAP)}`; // a stale line over the cap
    case 6: return `\n${"z".repeat(CAP * 2)}`; // junk over the cap
    case 7: return `\n${r.pick(NASTY_STRINGS)} ${r.pick(NASTY_STRINGS)}`;
    case 8: return "\n\n\n";
    case 9: return `\n${jsonText(randomValue(r))}`;
    case 10: return `\n${stale}`;
    default: return `\n${id.slice(0, 6)}`; // a prefix of the current id, cut before its reply
  }
}

test("random sequences of ping, exec and identity through the real client: each call gets its own answer or a ForkvmError", deadline(60_000, async () => {
  const t0 = Date.now();
  const CALLS = Number(process.env.FUZZ_AGENT_N ?? 600);
  const base = path.join(tmp, "agent");
  const guest = await fakeGuest(base);
  const client = new AgentClient(base, { maxReplyBytes: CAP, maxExecReplyBytes: CAP });
  const seen: Record<string, number> = {};
  const ids: string[] = [];
  try {
    for (let i = 0; i < CALLS; i++) {
      const op = r.pick(["ping", "exec", "identity"] as const);
      const plan: Plan = r.pick(["ok", "ok", "ok", "ok-glued", "twice", "err", "malformed", "overlong-own", "never", "late"]);
      const out = r.bytes(r.int(40));
      const errOut = r.bytes(r.int(10));
      const code = r.int(256);
      const fields = op === "ping" ? ` pong ${r.pick(["1", "2", "9.9-x"])}` : op === "exec" ? ` ${code} ${b64(out)} ${b64(errOut)}` : "";
      let whole = false;
      guest.onRequest = (req) => {
        const pre = Array.from({ length: r.int(5) }, () => noise(req.id, ids)).join("");
        ids.push(req.id);
        const reply = `\n${req.id} ok${fields}\n`;
        switch (plan) {
          case "ok": guest.send(`${pre}${reply}${noise(req.id, ids)}\n`); whole = true; break;
          case "ok-glued": guest.send(`${pre}${r.bytes(7).toString("latin1").replace(/\n/g, "")}${reply}`); whole = true; break; // the reply's leading newline ends the junk
          case "twice": guest.send(`${pre}${reply}${reply.replace(/ ok.*/, " ok pong second")}\n`); whole = true; break;
          case "err": guest.send(`${pre}\n${req.id} err ${b64(`Cannot ${op}: \x1b[31mno\n${"e".repeat(r.int(5000))}`)}\n`); break;
          case "malformed": { // wrong field counts, bad base64, a bad version or exit code
            const bad = op === "ping" ? r.pick(["pong", "pong 1 2", "png 1", "pong @@", "pong é"]) : op === "exec" ? r.pick(["0 !!! -", "0 - - -", "1234 - -", "x - -", "0 QUJ -", "0 -"]) : r.pick(["x", "- -", "1"]);
            guest.send(`${pre}\n${req.id} ok ${bad}\n`);
            break;
          }
          case "overlong-own": guest.send(`${pre}\n${req.id} ok ${"A".repeat(CAP + 10)}\n`); break;
          case "late": guest.send(pre); setTimeout(() => { whole = true; guest.send(reply); }, 70); break; // late for ping and identity (40 ms), in time for exec
          default: guest.send(pre); // never
        }
      };
      const ms = plan === "never" || plan === "late" ? 40 : 3000;
      const call = op === "ping" ? client.ping(ms)
        : op === "exec" ? client.exec(["true"], { timeoutMs: ms })
        : client.identity({ hostname: "h", mac: "52:54:00:00:00:01" }, ms);
      // exec's deadline is its timeout plus a 10 s grace: a "never" exec would wait that long.
      let raceTimer: NodeJS.Timeout | undefined;
      const race = new Promise<never>((_, rej) => (raceTimer = setTimeout(() => rej(new ForkvmError("TIMEOUT", "the test stopped waiting")), plan === "never" ? 80 : 2000)));
      race.catch(() => undefined);
      const res = await (op === "exec" && (plan === "never" || plan === "late") ? Promise.race([call, race]) : call).then((v) => ({ v }), (e) => ({ e }));
      clearTimeout(raceTimer);
      counts.calls++;
      const label = `call ${i} (${op}, plan ${plan}; seed ${seed})`;
      if ("v" in res) {
        if (op === "ping") assert.ok(["1", "2", "9.9-x"].includes(res.v as string), label);
        if (op === "exec") {
          const x = res.v as { exitCode: number; stdout: Buffer; stderr: Buffer };
          assert.is(x.exitCode, code, label);
          assert.ok(x.stdout.equals(out) && x.stderr.equals(errOut), `${label}: its own output`);
        }
        assert.ok(whole, `${label}: answered without a whole reply`);
        seen.ok = (seen.ok ?? 0) + 1;
      } else {
        const e = res.e as ForkvmError;
        assert.instance(e, ForkvmError, `${label}: ${e}`);
        assert.ok(["AGENT", "TIMEOUT"].includes(e.code), `${label}: ${e.code}`);
        assert.ok(!whole, `${label}: failed although its reply came whole: ${e.message}`);
        assert.ok(e.message.length < 2500, `${label}: a bounded message`);
        assert.not.match(e.message, /[\u0000-\u0008\u000b-\u001f\u007f]/, `${label}: no control characters`);
        const key = `${e.code}:${e.details.reason ?? ""}`;
        seen[key] = (seen[key] ?? 0) + 1;
      }
      if (op === "exec" && plan === "never") {
        // The raced exec is still waiting in the client: let it end (a reply with its id) before the next call.
        const last = ids.at(-1)!;
        guest.send(`\n${last} ok 0 - -\n`);
        await call.catch(() => undefined);
      }
    }
  } finally {
    client.close();
    guest.close();
  }
  console.log(`  ${counts.calls} calls, ${counts.lines} hostile lines: ${JSON.stringify(seen)}, ${Date.now() - t0} ms; seed ${seed}`);
  assert.ok((seen.ok ?? 0) > CALLS / 4, JSON.stringify(seen));
  assert.equal(uncaught.map(String), []);
}));

test("hostile requests encode to one line of plain words, or fail INVALID_ARGUMENT naming the field", () => {
  const word = /^[A-Za-z0-9+/=_:-]+$/; // base64, numbers, ids, a MAC
  const hostileString = () => (r.chance(0.5) ? r.pick(NASTY_STRINGS) : r.bytes(r.int(30)).toString(r.pick(["latin1", "utf8"]) as BufferEncoding));
  // JSON values only (what the CLI and the providers can hand on): a Symbol in timeoutMs or
  // epochSeconds makes the encoders' messages throw a TypeError (reported; JS callers only).
  // (Objects with their own toString or valueOf make those messages throw too: left out, same report.)
  const plain = (v: unknown): unknown => JSON.parse(jsonText(v), (k, x) => (k === "toString" || k === "valueOf" ? undefined : x));
  const anyOf = () => (r.chance(0.6) ? hostileString() : plain(randomValue(r)));
  let ok = 0, refused = 0;
  for (let i = 0; i < 6000; i++) {
    counts.encodes++;
    const id = r.chance(0.9) ? "AbCdEfGhIjKl" : "AbCd_-09";
    let make: () => string;
    const kind = r.int(3);
    if (kind === 0) {
      const argv = r.chance(0.8) ? Array.from({ length: r.int(5) }, anyOf) : anyOf();
      // (stdin only as text or bytes: another type makes EXEC.encode throw Buffer.from's TypeError; reported, skipped test below.)
      const stdin = r.pick([undefined, hostileString(), r.bytes(r.int(100))]);
      const timeoutMs = r.chance(0.5) ? r.pick(NASTY_NUMBERS) : anyOf();
      make = () => requestLine(id, EXEC, { argv, stdin, timeoutMs } as never);
    } else if (kind === 1) {
      const ident = {
        hostname: r.chance(0.3) ? "web-1" : anyOf(), mac: r.chance(0.3) ? "52:54:00:aa:bb:cc" : anyOf(),
        epochSeconds: r.pick([undefined, ...NASTY_NUMBERS]), seed: r.pick([undefined, r.bytes(64), anyOf()]),
        machineId: r.pick([undefined, "0".repeat(32), "A".repeat(32), anyOf()]),
      };
      make = () => requestLine(id, IDENTITY, ident as never);
    } else {
      make = () => requestLine(id, PING, undefined);
    }
    let line: string;
    try {
      line = make();
    } catch (err) {
      if (!(err instanceof ForkvmError)) throw new Error(`encode #${i} threw ${String(err)} (not a ForkvmError); seed ${seed}`);
      assert.is(err.code, "INVALID_ARGUMENT");
      assert.type(err.details.field, "string");
      refused++;
      continue;
    }
    ok++;
    // "\n<id> <op> <words>\n": exactly one request line, every word plain.
    assert.ok(line.startsWith("\n") && line.endsWith("\n"), `#${i}`);
    const body = line.slice(1, -1);
    assert.not.ok(/[\n\r\0]/.test(body), `#${i}: one line`);
    for (const w of body.split(" ")) assert.ok(word.test(w) || w === "-", `#${i}: word ${JSON.stringify(w.slice(0, 40))} (seed ${seed})`);
  }
  assert.ok(ok > 500 && refused > 500, `${ok} encoded, ${refused} refused`);
});

test.skip("KNOWN BUG: a stdin that is neither text nor bytes, or a timeout/epoch whose text cannot be made, throws a TypeError instead of INVALID_ARGUMENT (protocol.ts EXEC/IDENTITY.encode)", () => {
  const cases = [
    ...[0, true, {}, [1]].map((stdin) => () => requestLine("AbCdEfGhIjKl", EXEC, { argv: ["true"], stdin, timeoutMs: 0 } as never)),
    () => requestLine("AbCdEfGhIjKl", EXEC, { argv: ["true"], timeoutMs: { toString: 1 } } as never),
    () => requestLine("AbCdEfGhIjKl", IDENTITY, { hostname: "h", mac: "52:54:00:00:00:01", epochSeconds: Symbol("x") } as never),
  ];
  for (const make of cases) {
    const err = (() => { try { make(); } catch (e) { return e; } return undefined; })();
    assert.instance(err, ForkvmError, String(err));
  }
});

test("hostile client options are refused with INVALID_ARGUMENT naming the option", () => {
  for (const v of [0, -1, 1.5, NaN, Infinity, 2 ** 60, "1" as unknown as number, null as unknown as number]) {
    for (const field of ["maxReplyBytes", "maxExecReplyBytes"] as const) {
      counts.options++;
      const err = (() => { try { new AgentClient(path.join(tmp, "x"), { [field]: v }); } catch (e) { return e; } return undefined; })();
      assert.instance(err, ForkvmError, `${field}=${v}`);
      assert.is((err as ForkvmError).details.field, field);
    }
  }
  console.log(`  fuzz-agent: ${counts.calls} calls (${counts.lines} hostile lines), ${counts.encodes} requests encoded, ${counts.options} options; seed ${seed}`);
});

test.after(() => fs.rmSync(tmp, { recursive: true, force: true }));

test.run();
