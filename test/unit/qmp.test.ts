// The QMP client against a scripted fake monitor on a unix socket.
import { test } from "uvu";
import * as assert from "uvu/assert";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { Qmp } from "../../engine/qemu/qmp";
import { ForkvmError } from "../../engine/errors";
import { deadline } from "../helpers/deadline";

type Script = (cmd: { execute: string; arguments?: any }, send: (o: object) => void) => void;

function fakeMonitor(script: Script): Promise<{ path: string; close: () => void }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "qmp-"));
  const sockPath = path.join(dir, "qmp.sock");
  const server = net.createServer((c) => {
    const send = (o: object) => c.write(JSON.stringify(o) + "\r\n");
    send({ QMP: { version: { qemu: { major: 7, minor: 2, micro: 0 }, package: "" }, capabilities: [] } });
    let buf = "";
    c.on("data", (d) => {
      buf += d;
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        const cmd = JSON.parse(line);
        if (cmd.execute === "qmp_capabilities") send({ return: {} });
        else script(cmd, send);
      }
    });
  });
  return new Promise((resolve) => server.listen(sockPath, () => resolve({ path: sockPath, close: () => { server.close(); fs.rmSync(dir, { recursive: true, force: true }); } })));
}

test("executes commands one at a time and returns their values", deadline(5000, async () => {
  const seen: string[] = [];
  const m = await fakeMonitor((cmd, send) => { seen.push(cmd.execute); setTimeout(() => send({ return: { status: cmd.execute } }), 5); });
  const q = await Qmp.connect(m.path, 2000);
  const [a, b] = await Promise.all([q.execute<{ status: string }>("query-status"), q.execute<{ status: string }>("query-migrate")]);
  assert.is(a.status, "query-status");
  assert.is(b.status, "query-migrate");
  assert.equal(seen, ["query-status", "query-migrate"]);
  q.close(); m.close();
}));

test("a QMP error becomes a ForkvmError naming the command", deadline(5000, async () => {
  const m = await fakeMonitor((_c, send) => send({ error: { class: "GenericError", desc: "no such device" } }));
  const q = await Qmp.connect(m.path, 2000);
  const err: any = await q.execute("blockdev-snapshot-sync", { device: "x" }).catch((e: any) => e);
  assert.instance(err, ForkvmError);
  assert.is(err.code, "QMP");
  assert.match(err.message, /Cannot run blockdev-snapshot-sync: no such device/);
  q.close(); m.close();
}));

test("events are kept with QEMU's timestamps and can be awaited", deadline(5000, async () => {
  const m = await fakeMonitor((_c, send) => {
    send({ event: "STOP", timestamp: { seconds: 100, microseconds: 500 } });
    send({ return: {} });
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
