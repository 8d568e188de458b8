// The clone-safety contract (engine/CLONE-SAFETY.md) on real QEMU, for what test/engine/fork.test.ts
// does not already prove: what children share with the template and with each other (boot_id,
// the monotonic clock, user-space RNG state, pids, the guest address, a TCP connection open at
// capture, a listening server, /tmp until written) and the resets not tested there (vmgenid's kernel reseed, a
// machine-id that is not the parent's, /etc/hostname, QEMU's own NIC address). One parent boot
// (256 MiB, TCG), one frozen template, two children; `after` removes everything.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import * as net from "node:net";
import { Engine } from "../../engine/engine";
import { buildDefaultImage } from "../../engine/image";
import { Qmp } from "../../engine/qemu/qmp";
import { vmPaths } from "../../engine/qemu/argv";
import { deadline } from "../helpers/deadline";

const engine = new Engine();
const test = suite("clone safety");
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const sh = async (vm: string, cmd: string) => {
  const r = await engine.exec(vm, ["sh", "-c", cmd], { timeoutMs: 30_000 });
  assert.is(r.exitCode, 0, `${vm}: ${cmd}: ${r.stderr}`);
  return r.stdout.toString().trim();
};
const KIDS = ["cs-1", "cs-2"];

/** What the parent showed just before its capture. */
const parent: Record<string, string> = {};
let captureAt = 0;
let hostSocket: net.Socket | undefined;
const hostEvents: string[] = [];
let hostGot = "";

// A ticking server on 7001 (the host keeps a connection to it open across the capture) and a
// process drawing from awk's own PRNG once a second, both started before the capture.
const INIT = [
  "(while :; do echo tick; sleep 1; done) | nc -l -p 7001 >/tmp/nc.in 2>/tmp/nc.err &",
  "(awk 'BEGIN { srand(); while (1) { print int(rand() * 1e9); fflush(); system(\"sleep 1\") } }' >/tmp/prng.log 2>&1 &)",
  "echo from-the-parent > /tmp/who",
  "mkdir -p /www && echo served-by-the-parent > /www/index.html && (httpd -p 7002 -h /www &)",
];

/** The established connection to the guest's port 7001 as netstat shows it: "local remote sendq". */
async function conn7001(vm: string): Promise<{ local: string; remote: string; sendQ: number } | undefined> {
  const line = (await sh(vm, "netstat -tn 2>/dev/null | grep ':7001 ' || true")).split("\n").find((l) => l.includes("ESTABLISHED"));
  if (!line) return undefined;
  const [, , sendQ, local, remote] = line.trim().split(/\s+/);
  return { local: local!, remote: remote!, sendQ: Number(sendQ) };
}

test.before(deadline(600_000, async () => {
  await buildDefaultImage({});
  const p = await engine.createParent({ name: "cs-p", memoryMiB: 256, accel: "tcg", forwards: [{ guest: 7001 }], init: INIT });
  for (let i = 0; i < 100 && !(await sh("cs-p", "netstat -tln")).includes(":7001 "); i++) await sleep(100);
  // The host opens a connection through the forward and writes first (passt completes the
  // handshake with the first data), then reads ticks.
  for (let attempt = 0; attempt < 3 && !hostGot.includes("tick"); attempt++) {
    hostSocket?.destroy();
    hostEvents.length = 0;
    const s = net.createConnection(p.forwards[0]!.host, "127.0.0.1");
    hostSocket = s;
    s.on("connect", () => s.write("hello-from-host\n"));
    s.on("data", (d) => (hostGot += d));
    s.on("end", () => hostEvents.push("end"));
    s.on("close", () => hostEvents.push("close"));
    s.on("error", (e) => hostEvents.push(`error ${e.message}`));
    for (let i = 0; i < 50 && !hostGot.includes("tick"); i++) await sleep(100);
  }
  assert.match(hostGot, /tick/, "the host reads the guest's ticks before the capture");
  await sleep(1500); // a line or two in /tmp/prng.log
  for (const [k, cmd] of Object.entries({
    bootId: "cat /proc/sys/kernel/random/boot_id", machineId: "cat /etc/machine-id", mac: "cat /sys/class/net/eth0/address",
    ipv4: "ip -4 -o addr show eth0 | awk '{print $4}'", ncPid: "pidof nc", prngLines: "wc -l < /tmp/prng.log",
    vmfork: "dmesg | grep -c 'reseeded due to virtual machine fork' || true", uptime: "cut -d' ' -f1 /proc/uptime",
  })) parent[k] = await sh("cs-p", cmd);
  const c = await conn7001("cs-p");
  assert.ok(c, "the parent has the connection established");
  parent.conn = `${c!.local} ${c!.remote}`;
  captureAt = Date.now();
  await engine.createTemplate({ name: "cs-t", parent: "cs-p", source: "frozen", quiesceTimeoutMs: 1000 });
  for (let i = 0; i < 50 && !hostEvents.includes("close"); i++) await sleep(100);
  const r = await engine.fork({ template: "cs-t", names: KIDS, concurrency: 2, forwards: [{ guest: 7002 }] });
  assert.is(r.failed.length, 0, r.failed.map((f) => f.error.message).join("; "));
}));

test.after(async () => {
  hostSocket?.destroy();
  const names = [...engine.listTemplates().map((t) => t.name), ...engine.listVms().map((v) => v.name)];
  await engine.remove(names, { force: true }).catch((e) => console.error("cleanup:", e));
});

test("the kernel RNG is reseeded at the fork by vmgenid: every child logs it, the parent never had", deadline(60_000, async () => {
  assert.is(parent.vmfork, "0");
  for (const k of KIDS) assert.is(await sh(k, "dmesg | grep -c 'reseeded due to virtual machine fork'"), "1", k);
  const draws = await Promise.all(KIDS.map((k) => sh(k, "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'")));
  assert.is.not(draws[0], draws[1]);
}));

test("user-space RNG state is not reset: a process running at the capture draws the same numbers in every child", deadline(60_000, async () => {
  await sleep(2500);
  const logs = await Promise.all(KIDS.map((k) => sh(k, "cat /tmp/prng.log")));
  const [a, b] = logs.map((l) => l.split("\n"));
  const n = Math.min(a!.length, b!.length);
  assert.ok(n > Number(parent.prngLines) + 1, `new draws after the fork (${n} lines, ${parent.prngLines} at capture)`);
  assert.equal(a!.slice(0, n), b!.slice(0, n), "siblings drew the same sequence after the fork");
}));

test("boot_id is shared, not reset: every child has the parent's", deadline(30_000, async () => {
  for (const k of KIDS) assert.is(await sh(k, "cat /proc/sys/kernel/random/boot_id"), parent.bootId, k);
}));

test("processes running at the capture run on in every child, with the same pids", deadline(30_000, async () => {
  for (const k of KIDS) assert.is(await sh(k, "pidof nc"), parent.ncPid, k);
}));

test("the wall clock is set to the host's; the monotonic clock goes on from the capture", deadline(30_000, async () => {
  for (const k of KIDS) {
    const [epoch, up] = (await sh(k, "date +%s; cut -d' ' -f1 /proc/uptime")).split("\n").map(Number);
    assert.ok(Math.abs(epoch! - Date.now() / 1000) < 5, `${k}: wall clock ${epoch}`);
    const sinceCapture = (Date.now() - captureAt) / 1000;
    // Uptime = the parent's at the capture + the child's own run time (never the template's age on the host).
    assert.ok(up! >= Number(parent.uptime) && up! <= Number(parent.uptime) + sinceCapture + 5, `${k}: uptime ${up}, parent's ${parent.uptime}, ${sinceCapture.toFixed(1)} s since`);
  }
}));

test("machine-id is new in every child and is not the parent's", deadline(30_000, async () => {
  const ids = await Promise.all(KIDS.map((k) => sh(k, "cat /etc/machine-id")));
  for (const id of ids) {
    assert.match(id, /^[0-9a-f]{32}$/);
    assert.is.not(id, parent.machineId);
  }
  assert.is.not(ids[0], ids[1]);
}));

test("hostname (kernel and /etc/hostname) and MAC (guest driver and QEMU's NIC) are each child's own", deadline(30_000, async () => {
  for (const k of KIDS) {
    const vm = engine.vm(k);
    assert.is(await sh(k, "hostname"), k);
    assert.is(await sh(k, "cat /etc/hostname"), k);
    assert.is(await sh(k, "cat /sys/class/net/eth0/address"), vm.mac);
    assert.is.not(vm.mac, parent.mac);
    const qmp = await Qmp.connect(vmPaths(engine.store.dir("vms", k)).qmp, 5000);
    try {
      const filters = await qmp.execute<Array<{ "main-mac": string }>>("query-rx-filter");
      assert.is(filters[0]?.["main-mac"], vm.mac, `${k}: QEMU's NIC`);
    } finally {
      qmp.close();
    }
  }
}));

test("the guest address is the same in every sibling (each behind its own network)", deadline(30_000, async () => {
  for (const k of KIDS) assert.is(await sh(k, "ip -4 -o addr show eth0 | awk '{print $4}'"), parent.ipv4, k);
}));

test("a TCP connection open at the capture: the host end closes; every child keeps the guest end, same ports, and nothing answers it", deadline(60_000, async () => {
  assert.ok(hostEvents.includes("close"), `the host's end closed at the capture (${hostEvents.join(", ")})`);
  const first = await Promise.all(KIDS.map(conn7001));
  await sleep(3000);
  const later = await Promise.all(KIDS.map(conn7001));
  for (const [i, k] of KIDS.entries()) {
    assert.ok(first[i] && later[i], `${k}: the guest still has the connection`);
    assert.is(`${first[i]!.local} ${first[i]!.remote}`, parent.conn, `${k}: the parent's addresses and ports`);
    // The guest's ticks are never acknowledged: its send queue only grows.
    assert.ok(later[i]!.sendQ > 0 && later[i]!.sendQ >= first[i]!.sendQ, `${k}: send queue ${first[i]!.sendQ} -> ${later[i]!.sendQ}`);
    assert.is(await sh(k, "cat /tmp/nc.in"), "hello-from-host", `${k}: nothing reached it since the capture`);
  }
}));

test("a server listening at the capture answers in every child, on each child's own forwarded port", deadline(60_000, async () => {
  const ports = KIDS.map((k) => engine.vm(k).forwards[0]!.host);
  assert.is(new Set(ports).size, KIDS.length, "a host port per child");
  for (const [i, port] of ports.entries()) {
    let body = "";
    for (let n = 0; n < 50 && !body.includes("served"); n++) {
      body = await fetch(`http://127.0.0.1:${port}/`).then((x) => x.text(), () => "");
      if (!body.includes("served")) await sleep(200);
    }
    assert.is(body.trim(), "served-by-the-parent", `${KIDS[i]} on 127.0.0.1:${port}`);
  }
}));

test("/tmp (RAM) is inherited, then private: a child's write is not seen by its sibling", deadline(30_000, async () => {
  for (const k of KIDS) assert.is(await sh(k, "cat /tmp/who"), "from-the-parent", k);
  await sh("cs-1", "echo mine > /tmp/mine");
  assert.is(await sh("cs-2", "test -e /tmp/mine && echo yes || echo no"), "no");
}));

test.run();
