// Hostile guests (issue 8): a scripted fake guest on real FIFOs sends what no agent should, each
// call fails cleanly, the process survives and the next call works; then thousands of hostile
// reply lines straight into the parser. The rules tested are PROTOCOL.md's "Lines, ids and
// stale lines", "Base64 and the empty value" and "Size limits".
import { test } from "uvu";
import * as assert from "uvu/assert";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { AgentClient, createAgentFifos } from "../../engine/guest/client";
import { EXEC, IDENTITY, PING, parseReply, replyId, type AgentOp } from "../../engine/guest/protocol";
import { LineFramer } from "../../engine/util/line-framer";
import { ForkvmError } from "../../engine/errors";
import { deadline } from "../helpers/deadline";
import { fakeGuestChannel } from "../helpers/fake-guest";

const MiB = 1024 * 1024;
const enc = (b: Buffer | string) => Buffer.from(b).toString("base64") || "-";

// Anything thrown from a socket handler would land here instead of killing the runner unseen.
const uncaught: unknown[] = [];
process.on("uncaughtException", (e) => uncaught.push(e));

interface Req {
  id: string;
  op: string;
}
type Guest = (req: Req, send: (data: Buffer | string) => void) => void;

/** QEMU + a guest that runs `guest` on every request (replaceable: `peer.guest = ...`). */
async function hostileGuest(guest: Guest) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "agent-hostile-"));
  const base = path.join(dir, "agent");
  await createAgentFifos(base);
  const peer = {
    base,
    guest,
    requests: [] as Req[],
    /** What a real agent sends: a reply that starts and ends with a newline. */
    ok: (req: Req, fields = "pong 1") => `\n${req.id} ok${fields ? ` ${fields}` : ""}\n`,
    close: () => {
      ch.close();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
  const ch = fakeGuestChannel(base, ({ id, op }) => {
    const req = { id, op };
    peer.requests.push(req);
    peer.guest(req, (data) => ch.write(data));
  });
  return peer;
}

const honest: Guest = (req, send) => send(req.op === "exec" ? `\n${req.id} ok 0 ${enc("fine")} -\n` : `\n${req.id} ok pong 1\n`);

async function failure(p: Promise<unknown>): Promise<ForkvmError> {
  const e = await p.then(
    () => undefined,
    (err) => err,
  );
  assert.instance(e, ForkvmError, `expected a ForkvmError, got ${e}`);
  return e as ForkvmError;
}

/** The next call after a hostile one gets its own, right answer. */
async function nextCallWorks(c: AgentClient, peer: { guest: Guest }): Promise<void> {
  peer.guest = honest;
  assert.is(await c.ping(3000), "1");
  assert.is((await c.exec(["true"])).stdout.toString(), "fine");
}

test("random bytes from the guest fail only that call (TIMEOUT); the next call works", deadline(8000, async () => {
  const peer = await hostileGuest((_req, send) => send(randomBytes(MiB)));
  const c = new AgentClient(peer.base);
  const e = await failure(c.ping(400));
  assert.is(e.code, "TIMEOUT");
  await nextCallWorks(c, peer);
  c.close();
  peer.close();
}));

test("random bytes after the call's id are a malformed reply (AGENT)", deadline(5000, async () => {
  const peer = await hostileGuest((req, send) => send(Buffer.concat([Buffer.from(`\n${req.id} ok `), Buffer.from(randomBytes(64 * 1024).map((b) => (b === 10 ? 0 : b))), Buffer.from("\n")])));
  const c = new AgentClient(peer.base);
  for (const call of [c.ping(2000), c.exec(["x"]), c.identity({ hostname: "h", mac: "52:54:00:00:00:01" }, 2000)]) {
    const e = await failure(call);
    assert.is(e.code, "AGENT");
    assert.is(e.details.reason, "malformed");
    assert.ok(e.message.length < 400, `a short message, got ${e.message.length} chars`);
    assert.not.match(e.message, /[\u0000-\u001f\u007f-\u009f]/, "no control characters in the message");
  }
  await nextCallWorks(c, peer);
  c.close();
  peer.close();
}));

test("a huge line without newline fails the call with AGENT too-long at the cap; later calls skip its rest", deadline(10000, async () => {
  const peer = await hostileGuest((req, send) => send(`\n${req.id} ok pong ${"A".repeat(12 * MiB)}`));
  const c = new AgentClient(peer.base);
  const t0 = Date.now();
  const e = await failure(c.ping(5000));
  assert.is(e.code, "AGENT");
  assert.is(e.details.reason, "too-long");
  assert.is(e.details.limit, 4 * MiB);
  assert.match(e.message, /^Cannot ping the agent .*: the reply is longer than 4194304 bytes \(the client's maxReplyBytes\)$/);
  assert.ok(Date.now() - t0 < 3000, "fails as the cap passes, not at the deadline");
  await nextCallWorks(c, peer); // reads (and drops) the ~8 MiB still in the FIFO first
  c.close();
  peer.close();
}));

test("a 6 MiB error line (issue 8): too-long for ping, a short printable AGENT error for exec; the process survives", deadline(10000, async () => {
  const message = Buffer.from(`Cannot x: \x1b[31m${"y".repeat(6 * MiB)}`);
  const peer = await hostileGuest((req, send) => send(`\n${req.id} err ${enc(message)}\n`));
  const c = new AgentClient(peer.base);
  const ping = await failure(c.ping(3000));
  assert.is(ping.details.reason, "too-long");
  const exec = await failure(c.exec(["x"]));
  assert.is(exec.code, "AGENT");
  assert.is(exec.details.reason, "agent-error");
  assert.ok(exec.message.length < 2300, `message of ${exec.message.length} chars`);
  assert.ok(exec.message.includes("\\x1b[31m"), "the escape sequence is shown, not sent to the terminal");
  assert.ok(exec.message.includes(`(${message.length} bytes in all)`), exec.message.slice(-60));
  await nextCallWorks(c, peer);
  c.close();
  peer.close();
}));

test("the cap counts the bytes of the line without its newline: at the cap it is read, one past it fails", deadline(5000, async () => {
  const cap = 4096;
  let code = "0";
  // "<12-char id> ok <code> <stdout> -": 20 bytes around stdout when code is one digit.
  const peer = await hostileGuest((req, send) => send(`\n${req.id} ok ${code} ${"QUJD".repeat((cap - 20) / 4)} -\n`));
  const c = new AgentClient(peer.base, { maxExecReplyBytes: cap });
  assert.is((await c.exec(["x"])).stdout.length, ((cap - 20) / 4) * 3);
  code = "00"; // the same reply, one byte longer
  const e = await failure(c.exec(["x"]));
  assert.is(e.details.reason, "too-long");
  assert.is(e.details.limit, cap);
  assert.match(e.message, /maxExecReplyBytes/);
  c.close();
  peer.close();
}));

test("a stale line longer than the cap is skipped without failing the call in flight", deadline(8000, async () => {
  const peer = await hostileGuest((req, send) => send(`\nsomeoneelse ok 0 ${"QUJD".repeat(2 * MiB)} -\n${req.id} ok pong 1\n`));
  const c = new AgentClient(peer.base);
  assert.is(await c.ping(5000), "1");
  c.close();
  peer.close();
}));

test("invalid base64 in any field fails with AGENT malformed", deadline(5000, async () => {
  const bad = ["!!!!", "QUJ", "QU=D", "Q===", "QUJD\tQUJD", "é", "QUJD QUJD", ""];
  let i = 0;
  let kind: "out" | "err" | "msg" = "out";
  const peer = await hostileGuest((req, send) => {
    const b = bad[i % bad.length]!;
    if (kind === "out") send(`\n${req.id} ok 0 ${b} -\n`);
    else if (kind === "err") send(`\n${req.id} ok 0 - ${b}\n`);
    else send(`\n${req.id} err ${b}\n`);
  });
  const c = new AgentClient(peer.base);
  for (kind of ["out", "err", "msg"] as const) {
    for (i = 0; i < bad.length; i++) {
      const e = await failure(c.exec(["x"]));
      assert.is(e.code, "AGENT", `${kind} ${JSON.stringify(bad[i])}`);
      assert.is(e.details.reason, "malformed", `${kind} ${JSON.stringify(bad[i])}: ${e.message}`);
    }
  }
  await nextCallWorks(c, peer);
  c.close();
  peer.close();
}));

test("replies with wrong ids are stale: the call times out; a repeated id answers once", deadline(8000, async () => {
  const peer = await hostileGuest((req, send) => send(`\n${req.id}x ok pong 1\nx${req.id} ok pong 1\n${req.id.slice(1)} ok pong 1\n-- ok pong 1\n${"z".repeat(65)} ok pong 1\n`));
  const c = new AgentClient(peer.base);
  assert.is((await failure(c.ping(300))).code, "TIMEOUT");
  // The same id twice: the first answer is the answer, the second is never taken for another call.
  peer.guest = (req, send) => send(req.op === "exec" ? `\n${req.id} ok 0 ${enc("first")} -\n\n${req.id} ok 0 ${enc("second")} -\n` : `\n${req.id} ok pong 1\n`);
  assert.is((await c.exec(["x"])).stdout.toString(), "first");
  assert.is(await c.ping(2000), "1");
  // Ids of earlier calls, replayed before the right one.
  const old = peer.requests.map((r) => r.id);
  peer.guest = (req, send) => send(`${old.map((id) => `\n${id} ok 0 ${enc("replayed")} -`).join("")}\n${req.id} ok 0 ${enc("own")} -\n`);
  assert.is((await c.exec(["x"])).stdout.toString(), "own");
  c.close();
  peer.close();
}));

test("replies after the deadline are discarded; the next call gets its own answer", deadline(8000, async () => {
  const late: Req[] = [];
  const peer = await hostileGuest((req) => void late.push(req)); // answers nothing in time
  const c = new AgentClient(peer.base);
  assert.is((await failure(c.ping(200))).code, "TIMEOUT");
  assert.is((await failure(c.ping(200))).code, "TIMEOUT");
  // Now the late answers arrive first (valid replies, but to calls that are over), then the new call's.
  peer.guest = (req, send) => send(`${late.map((l) => `\n${l.id} ok pong late`).join("")}\n${req.id} ok pong 1\n`);
  assert.is(await c.ping(2000), "1");
  assert.is(late.length, 2);
  c.close();
  peer.close();
}));

test("no exception escaped a socket handler in the tests above", () => {
  assert.equal(uncaught, []);
});

// ---------------------------------------------------------------------------------------------
// In-process: the parser and the framer against thousands of hostile inputs (seeded: a failure
// names its input and repeats).

/** mulberry32: a small seeded PRNG, values in [0, 1). */
function prng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function hostileLine(rnd: () => number, id: string): Buffer {
  const randomBytes = (n: number) => Buffer.from(Array.from({ length: n }, () => Math.floor(rnd() * 256)));
  const pick = <T>(xs: T[]): T => xs[Math.floor(rnd() * xs.length)]!;
  const b64ish = () => pick([enc(randomBytes(Math.floor(rnd() * 40))), "-", "", "====", "QUJD=", "QUJ", "Q=JD", "QUJD!", "ÿÿÿÿ", "@", enc(randomBytes(3)).replace(/./, "\u0000")]);
  const word = () => pick([b64ish(), String(Math.floor(rnd() * 2000) - 500), "pong", "ok", "err", "1", "0", "999", "1.5", " ", "\t", "\r", "1e3", "0x1f", randomBytes(8).toString("latin1")]);
  const head = pick([id, id, id, `${id} `, "", " ", "-", "x".repeat(65), randomBytes(6).toString("latin1")]);
  const status = pick(["ok", "ok", "err", "OK", "", "error", randomBytes(2).toString("latin1")]);
  const n = Math.floor(rnd() * 6);
  const parts = [head, status, ...Array.from({ length: n }, word)];
  const sep = pick([" ", " ", " ", "  ", "\t"]);
  let line = Buffer.from(parts.join(sep), "latin1");
  if (rnd() < 0.1) line = randomBytes(Math.floor(rnd() * 256));
  if (rnd() < 0.01) line = Buffer.from(`${id} ${pick(["ok 0", "err", "ok pong"])} ${"QUJD".repeat(256 * 1024)}${pick(["", "=", " -", " - -", "!"])}`);
  return line;
}

test("5,000 hostile reply lines: the parser only ever returns a result or throws ForkvmError", () => {
  const rnd = prng(42);
  const ops: AgentOp<never, unknown>[] = [PING, EXEC, IDENTITY];
  const seen = { ok: 0, agent: 0 };
  const id = "AbCdEfGhIjKl";
  for (let i = 0; i < 5000; i++) {
    const line = hostileLine(rnd, id);
    replyId(line); // must not throw either
    for (const op of ops) {
      try {
        parseReply(line, op);
        seen.ok++;
      } catch (err) {
        if (!(err instanceof ForkvmError)) throw new Error(`line ${i} (${op.name}) threw ${err}: ${line.subarray(0, 80).toString("latin1")}`);
        assert.is(err.code, "AGENT");
        assert.ok(["malformed", "agent-error"].includes(err.details.reason as string), String(err.details.reason));
        assert.ok(err.message.length < 2300);
        seen.agent++;
      }
    }
  }
  assert.is(seen.ok + seen.agent, 15_000);
  assert.ok(seen.ok > 0 && seen.agent > 0, JSON.stringify(seen));
});

test("the framer holds at most the cap, reports each overlong line once and splits the rest exactly", () => {
  const rnd = prng(7);
  for (let round = 0; round < 200; round++) {
    const cap = 1 + Math.floor(rnd() * 200);
    const lines: Buffer[] = Array.from({ length: 1 + Math.floor(rnd() * 20) }, () => Buffer.from(Array.from({ length: Math.floor(rnd() * cap * 2) }, () => Math.floor(rnd() * 256)).map((b) => (b === 10 ? 11 : b))));
    const stream = Buffer.concat(lines.flatMap((l) => [l, Buffer.from("\n")]));
    const got: Buffer[] = [];
    let overflows = 0;
    const f = new LineFramer({ maxLineBytes: cap, onLine: (l) => got.push(Buffer.from(l)), onOverflow: () => overflows++ });
    for (let at = 0; at < stream.length; ) {
      const n = 1 + Math.floor(rnd() * 50);
      f.push(stream.subarray(at, at + n));
      assert.ok(f.buffered <= cap);
      at += n;
    }
    const fit = lines.filter((l) => l.length <= cap);
    assert.is(overflows, lines.length - fit.length);
    assert.equal(got.map((b) => b.toString("hex")), fit.map((b) => b.toString("hex")));
  }
});

test("a 40 MiB exec reply in 64 KiB chunks is framed and parsed in linear time", () => {
  const out = randomBytes(30 * MiB);
  const line = Buffer.from(`AbCdEfGhIjKl ok 0 ${out.toString("base64")} -\n`);
  let result: unknown;
  const t0 = Date.now();
  const f = new LineFramer({ maxLineBytes: 64 * MiB, onLine: (l) => (result = parseReply(l, EXEC)) });
  for (let at = 0; at < line.length; at += 64 * 1024) f.push(line.subarray(at, at + 64 * 1024));
  const ms = Date.now() - t0;
  assert.ok((result as { stdout: Buffer }).stdout.equals(out));
  assert.ok(ms < 3000, `took ${ms} ms`); // quadratic joining would copy ~13 GB here
});

test.run();
