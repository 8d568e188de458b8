// The QMP client against a scripted fake monitor on a unix socket. The monitor answers like
// QEMU (each reply carries the id of its command) unless a test makes it do otherwise.
import { test } from "uvu";
import * as assert from "uvu/assert";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { Qmp } from "../../engine/qemu/qmp";
import { ForkvmError } from "../../engine/errors";
import { deadline } from "../helpers/deadline";

type Cmd = { execute: string; arguments?: any; id?: unknown };
/** `reply` answers this command (its id added); `send` writes any object; `raw` any bytes. */
type Script = (cmd: Cmd, reply: (o: object) => void, send: (o: object) => void, raw: (s: string | Buffer) => void) => void;

function fakeMonitor(script: Script): Promise<{ path: string; close: () => void }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "qmp-"));
  const sockPath = path.join(dir, "qmp.sock");
  const server = net.createServer((c) => {
    c.on("error", () => {});
    const send = (o: object) => c.write(JSON.stringify(o) + "\r\n");
    send({ QMP: { version: { qemu: { major: 7, minor: 2, micro: 0 }, package: "" }, capabilities: [] } });
    let buf = "";
    c.on("data", (d) => {
      buf += d;
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        const cmd = JSON.parse(line) as Cmd;
        const reply = (o: object) => send({ ...o, id: cmd.id });
        if (cmd.execute === "qmp_capabilities") reply({ return: {} });
        else script(cmd, reply, send, (s) => c.write(s));
      }
    });
  });
  return new Promise((resolve) => server.listen(sockPath, () => resolve({ path: sockPath, close: () => { server.close(); fs.rmSync(dir, { recursive: true, force: true }); } })));
}

test("executes commands one at a time and returns their values", deadline(5000, async () => {
  const seen: string[] = [];
  const m = await fakeMonitor((cmd, reply) => { seen.push(cmd.execute); setTimeout(() => reply({ return: { status: cmd.execute } }), 5); });
  const q = await Qmp.connect(m.path, 2000);
  const [a, b] = await Promise.all([q.execute<{ status: string }>("query-status"), q.execute<{ status: string }>("query-migrate")]);
  assert.is(a.status, "query-status");
  assert.is(b.status, "query-migrate");
  assert.equal(seen, ["query-status", "query-migrate"]);
  q.close(); m.close();
}));

test("a QMP error becomes a ForkvmError naming the command", deadline(5000, async () => {
  const m = await fakeMonitor((_c, reply) => reply({ error: { class: "GenericError", desc: "no such device" } }));
  const q = await Qmp.connect(m.path, 2000);
  const err: any = await q.execute("blockdev-snapshot-sync", { device: "x" }).catch((e: any) => e);
  assert.instance(err, ForkvmError);
  assert.is(err.code, "QMP");
  assert.match(err.message, /Cannot run blockdev-snapshot-sync: no such device/);
  q.close(); m.close();
}));

test("events are kept with QEMU's timestamps and can be awaited", deadline(5000, async () => {
  const m = await fakeMonitor((_c, reply, send) => {
    send({ event: "STOP", timestamp: { seconds: 100, microseconds: 500 } });
    reply({ return: {} });
    setTimeout(() => send({ event: "RESUME", timestamp: { seconds: 100, microseconds: 4500 } }), 20);
  });
  const q = await Qmp.connect(m.path, 2000);
  await q.execute("stop");
  const resume = await q.waitEvent((e) => e.event === "RESUME", 1000, "RESUME");
  const stop = q.events.find((e) => e.event === "STOP")!;
  assert.is(Math.round((resume.atMs - stop.atMs) * 1000) / 1000, 4);
  q.close(); m.close();
}));

test("a command without a reply fails at its deadline", deadline(5000, async () => {
  const m = await fakeMonitor(() => {});
  const q = await Qmp.connect(m.path, 2000);
  const err: any = await q.execute("query-status", undefined, 100).catch((e: any) => e);
  assert.is(err.code, "TIMEOUT");
  q.close(); m.close();
}));

test("every command carries a fresh string id", deadline(5000, async () => {
  const ids: unknown[] = [];
  const m = await fakeMonitor((cmd, reply) => { ids.push(cmd.id); reply({ return: {} }); });
  const q = await Qmp.connect(m.path, 2000);
  for (let i = 0; i < 5; i++) await q.execute("query-status");
  assert.is(ids.length, 5);
  assert.ok(ids.every((id) => typeof id === "string"));
  assert.is(new Set(ids).size, 5);
  q.close(); m.close();
}));

test("a late reply to a timed-out command is discarded and the next command gets its own answer", deadline(5000, async () => {
  // QEMU answers in order: the first command is slow, the second is answered right after it.
  const held: Array<{ cmd: Cmd; reply: (o: object) => void }> = [];
  const m = await fakeMonitor((cmd, reply) => {
    if (held.length === 2) return reply({ return: { answer: cmd.execute } });
    held.push({ cmd, reply });
    if (held.length === 2) setTimeout(() => held.forEach((h) => h.reply({ return: { answer: h.cmd.execute } })), 150);
  });
  const q = await Qmp.connect(m.path, 2000);
  const first: any = await q.execute("query-status", undefined, 50).catch((e: any) => e);
  assert.instance(first, ForkvmError);
  assert.is(first.code, "TIMEOUT");
  const second = await q.execute<{ answer: string }>("query-migrate", undefined, 2000);
  assert.is(second.answer, "query-migrate");
  assert.is((await q.execute<{ answer: string }>("query-block", undefined, 2000)).answer, "query-block");
  q.close(); m.close();
}));

test("a timed-out command does not hold back the next one", deadline(5000, async () => {
  const sentAt: Record<string, number> = {};
  let late: (() => void) | undefined;
  const m = await fakeMonitor((cmd, reply) => {
    sentAt[cmd.execute] = Date.now();
    if (cmd.execute === "stop") late = () => reply({ return: {} }); // answered only at the end
    else reply({ return: { ok: cmd.execute } });
  });
  const q = await Qmp.connect(m.path, 2000);
  const t0 = Date.now();
  assert.is(((await q.execute("stop", undefined, 50).catch((e: any) => e)) as ForkvmError).code, "TIMEOUT");
  assert.equal(await q.execute("query-status", undefined, 1000), { ok: "query-status" });
  assert.ok(sentAt["query-status"]! - t0 < 500, "sent as soon as the first timed out");
  late!();
  assert.equal(await q.execute("cont", undefined, 1000), { ok: "cont" });
  q.close(); m.close();
}));

test("a reply with an unknown id, or with none, is ignored", deadline(5000, async () => {
  const m = await fakeMonitor((_cmd, reply, send) => {
    send({ return: { wrong: 1 }, id: "fvm-999" });
    send({ return: { wrong: 2 } });
    send({ return: { wrong: 3 }, id: 42 });
    send({ error: { class: "GenericError", desc: "not yours" }, id: "someone-else" });
    reply({ return: { right: true } });
  });
  const q = await Qmp.connect(m.path, 2000);
  assert.equal(await q.execute("query-status"), { right: true });
  q.close(); m.close();
}));

test("malformed lines and random bytes do not crash the client and the connection stays usable", deadline(5000, async () => {
  const uncaught: unknown[] = [];
  const onUncaught = (e: unknown) => uncaught.push(e);
  process.on("uncaughtException", onUncaught);
  let n = 0;
  const m = await fakeMonitor((_cmd, reply, send, raw) => {
    n++;
    raw("this is not json\r\n[1,2]\nnull\n42\n\"str\"\n{\"return\":\n}\n{}\n");
    raw(`${"[".repeat(100_000)}\n`);
    send({ QMP: { version: "again" } });
    send({ event: 5, timestamp: "x" });
    for (let i = 0; i < 200; i++) raw(randomBytes(256));
    raw("\n");
    reply({ return: { n } });
  });
  const q = await Qmp.connect(m.path, 2000);
  assert.equal(await q.execute("query-status"), { n: 1 });
  assert.equal(await q.execute("query-status"), { n: 2 });
  assert.not.ok(q.isClosed);
  process.off("uncaughtException", onUncaught);
  assert.equal(uncaught, []);
  q.close(); m.close();
}));

test("a reply over the cap fails its command with QMP too-long; the next command works", deadline(5000, async () => {
  const m = await fakeMonitor((cmd, reply) => reply({ return: cmd.execute === "query-qmp-schema" ? "x".repeat(10_000) : { fine: true } }));
  const q = await Qmp.connect(m.path, 2000, () => true, { maxLineBytes: 1024 });
  const err: any = await q.execute("query-qmp-schema").catch((e: any) => e);
  assert.instance(err, ForkvmError);
  assert.is(err.code, "QMP");
  assert.is(err.details.reason, "too-long");
  assert.match(err.message, /Cannot run query-qmp-schema: its reply is longer than 1024 bytes/);
  assert.equal(await q.execute("query-status"), { fine: true });
  q.close(); m.close();
}));

test("an overlong late reply of a timed-out command is not blamed on the next command", deadline(5000, async () => {
  let first: ((o: object) => void) | undefined;
  const m = await fakeMonitor((cmd, reply) => {
    if (!first) first = reply;
    else setTimeout(() => { first!({ return: "x".repeat(10_000) }); reply({ return: { own: cmd.execute } }); }, 20);
  });
  const q = await Qmp.connect(m.path, 2000, () => true, { maxLineBytes: 1024 });
  assert.is(((await q.execute("query-qmp-schema", undefined, 50).catch((e: any) => e)) as ForkvmError).code, "TIMEOUT");
  assert.equal(await q.execute("query-status", undefined, 1000), { own: "query-status" });
  q.close(); m.close();
}));

test("a monitor that goes away fails the command in flight", deadline(5000, async () => {
  let conn: (() => void) | undefined;
  const m = await fakeMonitor(() => conn?.());
  const q = await Qmp.connect(m.path, 2000);
  conn = () => (q as any).sock.destroy();
  const err: any = await q.execute("query-status").catch((e: any) => e);
  assert.is(err.code, "QMP");
  m.close();
}));

test("connecting to a socket that never appears fails when QEMU is gone", deadline(5000, async () => {
  const err: any = await Qmp.connect("/nonexistent/qmp.sock", 5000, () => false).catch((e: any) => e);
  assert.is(err.code, "QEMU");
}));

test.run();
