// The agent client against a scripted fake peer that plays QEMU's side of the FIFOs
// (reads <base>.in, writes <base>.out, both opened read-write as QEMU does). No QEMU needed.
// The wire format is engine/guest/PROTOCOL.md's; hostile guests are test/unit/agent-hostile.test.ts.
import { test } from "uvu";
import * as assert from "uvu/assert";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { AgentClient, createAgentFifos } from "../engine/guest/client";
import { ForkvmError } from "../engine/errors";
import { deadline } from "./helpers/deadline";
import { fakeGuestChannel } from "./helpers/fake-guest";

interface Request {
  id: string;
  op: string;
  args: string[];
}
type Handler = (req: Request, reply: (line: string) => void) => void;

const dec = (s: string) => (s === "-" ? Buffer.alloc(0) : Buffer.from(s, "base64"));
const enc = (b: Buffer | string) => Buffer.from(b).toString("base64") || "-";

async function fifos(): Promise<{ base: string; dir: string }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "agent-client-"));
  const base = path.join(dir, "agent");
  await createAgentFifos(base);
  return { base, dir };
}

/** Plays QEMU + guest agent: every request line goes to `handler`. */
function fakePeer(base: string, handler: Handler): { requests: Request[]; close: () => void; write: (s: string) => void } {
  const requests: Request[] = [];
  const ch = fakeGuestChannel(base, (req) => {
    requests.push(req);
    handler(req, (l) => ch.write(l));
  });
  return { requests, write: (s) => ch.write(s), close: ch.close };
}

const pingHandler: Handler = (req, reply) => {
  if (req.op === "ping") reply(`${req.id} ok pong 1\n`);
};

test("creates both FIFOs (0600), keeps existing ones and replaces anything else", deadline(5000, async () => {
  const { base, dir } = await fifos();
  assert.ok(fs.statSync(`${base}.in`).isFIFO());
  assert.ok(fs.statSync(`${base}.out`).isFIFO());
  assert.is(fs.statSync(`${base}.in`).mode & 0o777, 0o600);
  const ino = fs.statSync(`${base}.out`).ino;
  fs.rmSync(`${base}.in`);
  fs.writeFileSync(`${base}.in`, "not a fifo");
  await createAgentFifos(base);
  assert.ok(fs.statSync(`${base}.in`).isFIFO());
  assert.is(fs.statSync(`${base}.out`).ino, ino);
  fs.rmSync(dir, { recursive: true, force: true });
}));

test("createAgentFifos fails with HOST naming the FIFO when mkfifo cannot make it", deadline(5000, async () => {
  const err = await createAgentFifos("/nonexistent-dir/agent").catch((e) => e);
  assert.instance(err, ForkvmError);
  assert.is(err.code, "HOST");
  assert.match(err.message, /^Cannot create agent FIFO \/nonexistent-dir\/agent\.in: mkfifo failed/);
}));

test("ping returns the agent version", deadline(5000, async () => {
  const { base, dir } = await fifos();
  const peer = fakePeer(base, pingHandler);
  const c = new AgentClient(base);
  assert.is(await c.ping(2000), "1");
  assert.is(peer.requests.length, 1);
  assert.match(peer.requests[0]!.id, /^[A-Za-z0-9_-]+$/);
  c.close();
  peer.close();
  fs.rmSync(dir, { recursive: true, force: true });
}));

test("exec sends argv and stdin exactly and returns binary stdout", deadline(5000, async () => {
  const { base, dir } = await fifos();
  const binary = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
  const peer = fakePeer(base, (req, reply) => {
    const [timeout, stdin, ...argv] = req.args;
    assert.is(req.op, "exec");
    assert.is(timeout, "5");
    assert.is(dec(stdin!).toString(), "in put\n");
    assert.equal(argv.map((a) => dec(a).toString()), ["printf", "%s\n", "two words", "", "trailing\n"]);
    reply(`${req.id} ok 3 ${enc(binary)} ${enc("warn\n")}\n`);
  });
  const c = new AgentClient(base);
  const r = await c.exec(["printf", "%s\n", "two words", "", "trailing\n"], { stdin: "in put\n", timeoutMs: 4500 });
  assert.is(r.exitCode, 3);
  assert.ok(r.stdout.equals(binary));
  assert.is(r.stderr.toString(), "warn\n");
  c.close();
  peer.close();
  fs.rmSync(dir, { recursive: true, force: true });
}));

test("exec handles a reply of several megabytes", deadline(10000, async () => {
  const { base, dir } = await fifos();
  const big = Buffer.alloc(3 * 1024 * 1024, 7);
  const peer = fakePeer(base, (req, reply) => reply(`${req.id} ok 0 ${enc(big)} -\n`));
  const c = new AgentClient(base);
  const r = await c.exec(["cat", "big"]);
  assert.is(r.stdout.length, big.length);
  assert.ok(r.stdout.equals(big));
  assert.is(r.stderr.length, 0);
  c.close();
  peer.close();
  fs.rmSync(dir, { recursive: true, force: true });
}));

test("stale lines from earlier clients are discarded (PROTOCOL.md: ids and stale lines)", deadline(5000, async () => {
  const { base, dir } = await fifos();
  const peer = fakePeer(base, (req, reply) => {
    // A late answer to someone else, the tail of a line cut short, then junk, then ours.
    reply(`oldclient1 ok pong 1\nQUJD ZGVm -\n\n!!! garbage\n${req.id.slice(0, 3)}`);
    setTimeout(() => reply(`x ok\n${req.id} ok pong 1\n`), 20);
  });
  const c = new AgentClient(base);
  assert.is(await c.ping(2000), "1");
  c.close();
  peer.close();
  fs.rmSync(dir, { recursive: true, force: true });
}));

test("a reply cut short by a dying agent does not swallow the next one", deadline(5000, async () => {
  const { base, dir } = await fifos();
  const peer = fakePeer(base, (req, reply) => reply(`\noldclient2 ok 0 QUJD\n${req.id} ok pong 1\n`));
  const c = new AgentClient(base);
  assert.is(await c.ping(2000), "1");
  c.close();
  peer.close();
  fs.rmSync(dir, { recursive: true, force: true });
}));

test("a reply left over by an earlier call does not answer the next one", deadline(5000, async () => {
  const { base, dir } = await fifos();
  let n = 0;
  const peer = fakePeer(base, (req, reply) => {
    n++;
    if (n === 1) return; // the first call times out; its answer comes late
    if (n === 2) reply(`${peer.requests[0]!.id} ok 0 ${enc("late")} -\n`);
    reply(`${req.id} ok 0 ${enc("fresh")} -\n`);
  });
  const c = new AgentClient(base);
  const first = await c.ping(100).catch((e) => e);
  assert.instance(first, ForkvmError);
  assert.is(first.code, "TIMEOUT");
  const r = await c.exec(["echo"]);
  assert.is(r.stdout.toString(), "fresh");
  c.close();
  peer.close();
  fs.rmSync(dir, { recursive: true, force: true });
}));

test("a deadline without an answer fails with TIMEOUT naming the op and VM", deadline(5000, async () => {
  const { base, dir } = await fifos();
  const peer = fakePeer(base, () => {});
  const c = new AgentClient(base);
  const t0 = Date.now();
  const err = await c.ping(150).catch((e) => e);
  assert.instance(err, ForkvmError);
  assert.is(err.code, "TIMEOUT");
  assert.match(err.message, /^Cannot ping the agent/);
  assert.ok(err.message.includes(base));
  assert.is(err.details.op, "ping");
  assert.ok(Date.now() - t0 < 1000);
  c.close();
  peer.close();
  fs.rmSync(dir, { recursive: true, force: true });
}));

test("a call times out at its deadline even when its request cannot be written", deadline(5000, async () => {
  const { base, dir } = await fifos();
  // QEMU is there but the guest reads nothing: fill the FIFO so the next write blocks.
  const stuck = fs.openSync(`${base}.in`, fs.constants.O_RDWR | fs.constants.O_NONBLOCK);
  const reply = fs.openSync(`${base}.out`, fs.constants.O_RDWR | fs.constants.O_NONBLOCK);
  const chunk = Buffer.alloc(4096, 0x41);
  for (;;) {
    try {
      fs.writeSync(stuck, chunk);
    } catch {
      break; // EAGAIN: full
    }
  }
  const c = new AgentClient(base);
  const t0 = Date.now();
  const err = await c.ping(200).catch((e) => e);
  assert.is(err.code, "TIMEOUT");
  assert.ok(Date.now() - t0 < 1000, `took ${Date.now() - t0} ms`);
  c.close();
  fs.closeSync(stuck);
  fs.closeSync(reply);
  fs.rmSync(dir, { recursive: true, force: true });
}));

test("a malformed reply fails with AGENT", deadline(5000, async () => {
  const { base, dir } = await fifos();
  const peer = fakePeer(base, (req, reply) => reply(req.op === "exec" ? `${req.id} ok notanumber - -\n` : `${req.id} ok pong\n`));
  const c = new AgentClient(base);
  const e1 = await c.ping(2000).catch((e) => e);
  assert.is(e1.code, "AGENT");
  assert.match(e1.message, /malformed reply/);
  const e2 = await c.exec(["true"]).catch((e) => e);
  assert.is(e2.code, "AGENT");
  c.close();
  peer.close();
  fs.rmSync(dir, { recursive: true, force: true });
}));

test("an agent error becomes AGENT with the agent's message", deadline(5000, async () => {
  const { base, dir } = await fifos();
  const peer = fakePeer(base, (req, reply) => reply(`${req.id} err ${enc("Cannot set hostname: permission denied")}\n`));
  const c = new AgentClient(base);
  const err = await c.identity({ hostname: "child-1", mac: "52:54:00:aa:bb:cc" }, 2000).catch((e) => e);
  assert.is(err.code, "AGENT");
  assert.match(err.message, /Cannot set the guest identity .*: Cannot set hostname: permission denied/);
  c.close();
  peer.close();
  fs.rmSync(dir, { recursive: true, force: true });
}));

test("identity sends hostname, MAC, whole seconds, seed and machine id", deadline(5000, async () => {
  const { base, dir } = await fifos();
  const peer = fakePeer(base, (req, reply) => reply(`${req.id} ok\n`));
  const c = new AgentClient(base);
  const seed = Buffer.from([1, 2, 3, 250]);
  await c.identity({ hostname: "child-1", mac: "52:54:00:AA:BB:CC", epochSeconds: 1700000000.75, seed, machineId: "0123456789abcdef0123456789abcdef" }, 2000);
  const [h, mac, epoch, s, mid] = peer.requests[0]!.args;
  assert.is(peer.requests[0]!.op, "identity");
  assert.is(dec(h!).toString(), "child-1");
  assert.is(mac, "52:54:00:aa:bb:cc");
  assert.is(epoch, "1700000000");
  assert.ok(dec(s!).equals(seed));
  assert.is(mid, "0123456789abcdef0123456789abcdef");
  const bad = await c.identity({ hostname: "child-1", mac: "52:54:00" }, 2000).catch((e) => e);
  assert.is(bad.code, "INVALID_ARGUMENT");
  assert.is(bad.details.field, "mac");
  const badHost = await c.identity({ hostname: "no spaces", mac: "52:54:00:aa:bb:cc" }, 2000).catch((e) => e);
  assert.is(badHost.details.field, "hostname");
  c.close();
  peer.close();
  fs.rmSync(dir, { recursive: true, force: true });
}));

test("calls fail with AGENT at once when QEMU has not opened the FIFOs", deadline(5000, async () => {
  const { base, dir } = await fifos();
  const c = new AgentClient(base);
  const t0 = Date.now();
  const err = await c.ping(3000).catch((e) => e);
  assert.is(err.code, "AGENT");
  assert.match(err.message, /not running/);
  assert.ok(Date.now() - t0 < 500);
  c.close();
  fs.rmSync(dir, { recursive: true, force: true });
}));

test("waitReady pings again and again until the agent answers (PROTOCOL.md: readiness)", deadline(8000, async () => {
  const { base, dir } = await fifos();
  const c = new AgentClient(base);
  // QEMU appears after 200 ms; the guest's agent starts answering only after 1.3 s.
  let peer: ReturnType<typeof fakePeer> | undefined;
  const born = Date.now();
  setTimeout(() => {
    peer = fakePeer(base, (req, reply) => {
      if (Date.now() - born > 1300) reply(`${req.id} ok pong 1\n`);
    });
  }, 200);
  const waited = await c.waitReady(5000, () => true);
  assert.ok(waited >= 1300, `waited ${waited} ms`);
  assert.ok(peer!.requests.length >= 2, "pings were resent");
  c.close();
  peer!.close();
  fs.rmSync(dir, { recursive: true, force: true });
}));

test("waitReady takes only the pong of its current ping: late pongs of earlier attempts are stale", deadline(8000, async () => {
  const { base, dir } = await fifos();
  let first: string | undefined;
  const peer = fakePeer(base, (req, reply) => {
    if (!first) {
      first = req.id; // answered late, during the second attempt, with a version nobody asked for
      return;
    }
    reply(`${first} ok pong stale\n`);
    setTimeout(() => reply(`${req.id} ok pong 1\n`), 50);
  });
  const c = new AgentClient(base);
  const waited = await c.waitReady(5000);
  assert.ok(waited >= 1000, `the first attempt timed out (${waited} ms)`);
  assert.is(peer.requests.length, 2);
  c.close();
  peer.close();
  fs.rmSync(dir, { recursive: true, force: true });
}));

test("waitReady fails at once with AGENT when the agent answers an error", deadline(5000, async () => {
  const { base, dir } = await fifos();
  const peer = fakePeer(base, (req, reply) => reply(`${req.id} err ${enc("Cannot run ping: unknown operation")}\n`));
  const c = new AgentClient(base);
  const t0 = Date.now();
  const err = await c.waitReady(4000).catch((e) => e);
  assert.is(err.code, "AGENT");
  assert.is(err.details.reason, "agent-error");
  assert.match(err.message, /unknown operation/);
  assert.ok(Date.now() - t0 < 1000);
  c.close();
  peer.close();
  fs.rmSync(dir, { recursive: true, force: true });
}));

test("waitReady fails fast with AGENT when the VM dies", deadline(5000, async () => {
  const { base, dir } = await fifos();
  const peer = fakePeer(base, () => {});
  const c = new AgentClient(base);
  let alive = true;
  setTimeout(() => (alive = false), 300);
  const t0 = Date.now();
  const err = await c.waitReady(4000, () => alive).catch((e) => e);
  assert.is(err.code, "AGENT");
  assert.match(err.message, /not running/);
  assert.ok(Date.now() - t0 < 1000, `took ${Date.now() - t0} ms`);
  c.close();
  peer.close();
  fs.rmSync(dir, { recursive: true, force: true });
}));

test("waitReady fails with TIMEOUT at its deadline", deadline(5000, async () => {
  const { base, dir } = await fifos();
  const peer = fakePeer(base, () => {});
  const c = new AgentClient(base);
  const err = await c.waitReady(300).catch((e) => e);
  assert.is(err.code, "TIMEOUT");
  c.close();
  peer.close();
  fs.rmSync(dir, { recursive: true, force: true });
}));

/** A peer that answers every request after `delayMs` with its id as stdout, counting overlap. */
function countingPeer(base: string, delayMs: number) {
  const counts = { inFlight: 0, most: 0 };
  const peer = fakePeer(base, (req, reply) => {
    counts.inFlight++;
    counts.most = Math.max(counts.most, counts.inFlight);
    setTimeout(() => {
      counts.inFlight--;
      reply(`${req.id} ok 0 ${enc(req.id)} -\n`);
    }, delayMs);
  });
  return { peer, counts };
}

test("calls of one client run one at a time", deadline(5000, async () => {
  const { base, dir } = await fifos();
  const { peer, counts } = countingPeer(base, 30);
  const c = new AgentClient(base);
  const results = await Promise.all([1, 2, 3, 4].map(() => c.exec(["true"])));
  assert.is(counts.most, 1);
  assert.is(new Set(results.map((r) => r.stdout.toString())).size, 4);
  c.close();
  peer.close();
  fs.rmSync(dir, { recursive: true, force: true });
}));

test("clients sharing a lock file never overlap and each gets its own reply", deadline(8000, async () => {
  const { base, dir } = await fifos();
  const { peer, counts } = countingPeer(base, 20);
  const lockFile = path.join(dir, "agent.lock");
  const clients = [0, 1, 2].map(() => new AgentClient(base, { lockFile }));
  const results = await Promise.all(clients.flatMap((c) => [c.exec(["a"]), c.exec(["b"])]));
  assert.is(counts.most, 1);
  assert.is(new Set(results.map((r) => r.stdout.toString())).size, 6);
  clients.forEach((c) => c.close());
  peer.close();
  // The lock outlives the reply by a moment: it is released once the channel is closed.
  for (let i = 0; i < 50 && fs.existsSync(lockFile); i++) await new Promise((r) => setTimeout(r, 10));
  assert.not.ok(fs.existsSync(lockFile), "the lock is released");
  fs.rmSync(dir, { recursive: true, force: true });
}));

test("close fails the call in flight and refuses new ones", deadline(5000, async () => {
  const { base, dir } = await fifos();
  const peer = fakePeer(base, () => {});
  const c = new AgentClient(base);
  const p = c.ping(3000).catch((e) => e);
  setTimeout(() => c.close(), 50);
  const err = await p;
  assert.is(err.code, "AGENT");
  const again = await c.ping(1000).catch((e) => e);
  assert.is(again.code, "AGENT");
  peer.close();
  fs.rmSync(dir, { recursive: true, force: true });
}));

test("exec rejects an empty argv with INVALID_ARGUMENT", deadline(2000, async () => {
  const c = new AgentClient("/nonexistent/agent");
  const err = await c.exec([]).catch((e) => e);
  assert.is(err.code, "INVALID_ARGUMENT");
  assert.is(err.details.field, "argv");
}));

test("reply caps must be positive whole numbers of bytes (PROTOCOL.md: size limits)", () => {
  for (const [field, v] of [["maxReplyBytes", 0], ["maxExecReplyBytes", 1.5], ["maxReplyBytes", -1]] as const) {
    try {
      new AgentClient("/nonexistent/agent", { [field]: v });
      assert.unreachable(`${field}=${v} accepted`);
    } catch (err: any) {
      assert.is(err.code, "INVALID_ARGUMENT");
      assert.is(err.details.field, field);
    }
  }
});

test.run();
