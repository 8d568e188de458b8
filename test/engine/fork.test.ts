// The fork engine on real QEMU (TCG here): one parent per suite, frozen into templates, forked.
// Every VM this suite starts is removed in `after`, even when a test fails.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import * as fs from "node:fs";
import * as path from "node:path";
import { createHash } from "node:crypto";
import { execFileSync, spawn } from "node:child_process";
import { Engine } from "../../engine/engine";
import { buildDefaultImage } from "../../engine/image";
import { ForkvmError } from "../../engine/errors";
import { isAlive } from "../../engine/qemu/process";
import { deadline } from "../helpers/deadline";
import { consoleEcho } from "../helpers/console";

const engine = new Engine();
const root = path.join(__dirname, "..", "..");
const test = suite("fork engine");
const sh = async (vm: string, cmd: string) => {
  const r = await engine.exec(vm, ["sh", "-c", cmd], { timeoutMs: 30_000 });
  assert.is(r.exitCode, 0, `${vm}: ${cmd}: ${r.stderr}`);
  return r.stdout.toString().trim();
};
const sha = (f: string) => createHash("sha256").update(fs.readFileSync(f)).digest("hex");
let warm = "";

test.before(deadline(600_000, async () => {
  await buildDefaultImage({});
  const p = await engine.createParent({
    name: "p", memoryMiB: 256, accel: "tcg",
    init: ["head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \\n' > /tmp/warm", "echo base > /data/base.txt && sync"],
  });
  assert.is(p.status, "running");
  warm = await sh("p", "cat /tmp/warm");
  assert.match(warm, /^[0-9a-f]{16}$/);
}));

test.after(async () => {
  const names = [...engine.listTemplates().map((t) => t.name), ...engine.listVms().map((v) => v.name)];
  await engine.remove(names, { force: true }).catch((e) => console.error("cleanup:", e));
});

test("a running-mode template pauses the parent briefly; the parent runs on and its later writes stay out", deadline(120_000, async () => {
  const t = await engine.createTemplate({ name: "t-live", parent: "p", source: "running" });
  assert.ok(t.timings.downtimeMs !== undefined && t.timings.downtimeMs < 1000, `downtime ${t.timings.downtimeMs} ms`);
  console.log(`  running-mode source downtime ${t.timings.downtimeMs} ms (QEMU: ${t.timings.qemuDowntimeMs} ms), capture ${t.timings.captureMs} ms, build ${t.timings.buildMs} ms`);
  await sh("p", "echo after > /tmp/after && echo after > /data/after.txt && sync");
  const r = await engine.fork({ template: "t-live", names: ["live-1"] });
  assert.is(r.failed.length, 0, r.failed.map((f) => f.error.message).join("; "));
  assert.is(await sh("live-1", "cat /tmp/warm"), warm);
  assert.is(await sh("live-1", "test -e /tmp/after && echo yes || echo no"), "no");
  assert.is(await sh("live-1", "test -e /data/after.txt && echo yes || echo no"), "no");
  assert.is(await sh("live-1", "cat /data/base.txt"), "base");
}));

test("a parent stopped and started again from the CLI runs its init again: it is warm again", deadline(180_000, async () => {
  await sh("p", "rm -f /tmp/warm");
  const stop = await cli(["stop", "p"]);
  assert.is(stop.code, 0, stop.stderr);
  const start = await cli(["start", "p"]);
  assert.is(start.code, 0, start.stderr);
  const again = await sh("p", "cat /tmp/warm");
  assert.match(again, /^[0-9a-f]{16}$/, "the init command wrote /tmp/warm again");
  assert.is.not(again, warm, "a fresh value: init ran in the new boot");
  warm = again;
  assert.is(await sh("p", "cat /data/base.txt"), "base");
}));

test("a frozen template consumes the parent; its files are read-only and its own", deadline(60_000, async () => {
  const t = await engine.createTemplate({ name: "t", parent: "p", source: "frozen" });
  for (const f of [t.shape.kernel, t.shape.initrd]) assert.ok(f.startsWith(engine.store.dir("templates", "t")), f);
  console.log(`  frozen template: freeze ${t.timings.freezeMs} ms, checkpoint ${(t.stateBytes / 1048576).toFixed(2)} MiB`);
  assert.is(engine.vm("p").status, "consumed");
  assert.is(fs.statSync(t.memoryPath).mode & 0o222, 0);
  assert.is(fs.statSync(t.diskPath!).mode & 0o222, 0);
}));

test("every child reads the value written into the parent's RAM before freezing", deadline(120_000, async () => {
  const r = await engine.fork({ template: "t", count: 3, prefix: "c", concurrency: 3 });
  assert.is(r.failed.length, 0, r.failed.map((f) => f.error.message).join("; "));
  assert.equal(r.children.map((c) => c.name), ["c-1", "c-2", "c-3"]);
  for (const c of r.children) assert.is(await sh(c.name, "cat /tmp/warm"), warm);
}));

test("children have distinct MACs (inside the guest and in QEMU), hostnames and random bytes", deadline(60_000, async () => {
  const names = ["c-1", "c-2", "c-3"];
  const macs = await Promise.all(names.map((n) => sh(n, "cat /sys/class/net/eth0/address")));
  assert.equal(macs, names.map((n) => engine.vm(n).mac));
  assert.is(new Set(macs).size, 3);
  const hosts = await Promise.all(names.map((n) => sh(n, "hostname")));
  assert.equal(hosts, names);
  const rnd = await Promise.all(names.map((n) => sh(n, "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'")));
  assert.is(new Set(rnd).size, 3);
  const ids = await Promise.all(names.map((n) => sh(n, "cat /etc/machine-id")));
  assert.is(new Set(ids).size, 3);
  const skew = await Promise.all(names.map((n) => sh(n, "date +%s")));
  for (const s of skew) assert.ok(Math.abs(Number(s) - Date.now() / 1000) < 30, `guest clock ${s}`);
}));

test("one child's disk writes are invisible to its siblings and to the template", deadline(60_000, async () => {
  const base = sha(engine.template("t").diskPath!);
  await sh("c-1", "echo mine > /data/x.txt && sync");
  assert.is(await sh("c-1", "cat /data/x.txt"), "mine");
  assert.is(await sh("c-2", "test -e /data/x.txt && echo yes || echo no"), "no");
  assert.is(await sh("c-2", "cat /data/base.txt"), "base");
  assert.is(sha(engine.template("t").diskPath!), base);
}));

test("reset brings a non-persistent child back to the template state, keeping its identity", deadline(60_000, async () => {
  await sh("c-1", "echo dirty > /tmp/dirty");
  const before = engine.vm("c-1");
  const after = await engine.reset("c-1");
  assert.is(after.status, "running");
  assert.is.not(after.pid, before.pid);
  assert.is(await sh("c-1", "test -e /tmp/dirty && echo yes || echo no"), "no");
  assert.is(await sh("c-1", "test -e /data/x.txt && echo yes || echo no"), "no");
  assert.is(await sh("c-1", "cat /tmp/warm"), warm);
  assert.is(await sh("c-1", "cat /sys/class/net/eth0/address"), before.mac);
  assert.is(await sh("c-1", "hostname"), "c-1");
}));

test("a reset child gets its metadata again", deadline(60_000, async () => {
  await engine.setMetadata("c-1", { SLOT: "one" });
  await engine.reset("c-1");
  assert.is(await sh("c-1", "cat /etc/forkvm/metadata"), "SLOT='one'");
  assert.equal(JSON.parse(await sh("c-1", "cat /etc/forkvm/metadata.json")), { SLOT: "one" });
}));

test("a persistent child keeps its disk across stop and start (a cold boot from its own disk)", deadline(300_000, async () => {
  const r = await engine.fork({ template: "t", names: ["keep"], persistent: true, metadata: { ROLE: "web" } });
  assert.is(r.failed.length, 0);
  assert.is(await sh("keep", "cat /etc/forkvm/metadata"), "ROLE='web'");
  await sh("keep", "echo kept > /data/keep.txt && sync");
  assert.is((await engine.stop("keep")).status, "stopped");
  const started = await engine.start("keep");
  assert.is(started.status, "running");
  assert.is(await sh("keep", "cat /data/keep.txt"), "kept");
  assert.is(await sh("keep", "cat /data/base.txt"), "base");
  assert.is(await sh("keep", "hostname"), "keep");
  assert.is(await sh("keep", "cat /sys/class/net/eth0/address"), engine.vm("keep").mac);
  assert.is(await sh("keep", "cat /etc/forkvm/metadata"), "ROLE='web'", "the metadata survives a stop and start");
  await engine.setMetadata("keep", { ROLE: "db" });
  assert.is(await sh("keep", "cat /etc/forkvm/metadata"), "ROLE='db'");
  assert.equal(engine.vm("keep").metadata, { ROLE: "db" }, "setMetadata changes manifest and guest together");
}));

test("port forwards reach a forked child; metadata, hostnames and MACs are given to it", deadline(60_000, async () => {
  const r = await engine.fork({
    template: "t", names: ["fw-1"], hostnames: ["web-a"], macs: ["52:54:00:aa:bb:01"],
    forwards: [{ guest: 8000 }], metadata: { ROLE: "web", NOTE: "it's here" },
  });
  assert.is(r.failed.length, 0, r.failed.map((f) => f.error.message).join("; "));
  const vm = engine.vm("fw-1");
  assert.is(await sh("fw-1", "hostname"), "web-a");
  assert.is(await sh("fw-1", "cat /sys/class/net/eth0/address"), "52:54:00:aa:bb:01");
  assert.is(await sh("fw-1", ". /etc/forkvm/metadata && echo \"$ROLE/$NOTE\""), "web/it's here");
  assert.equal(JSON.parse(await sh("fw-1", "cat /etc/forkvm/metadata.json")), { ROLE: "web", NOTE: "it's here" });
  await sh("fw-1", "mkdir -p /www && echo hello-from-fw-1 > /www/index.html && (httpd -p 8000 -h /www &)");
  const port = vm.forwards[0].host;
  let body = "";
  for (let i = 0; i < 50 && !body.includes("hello"); i++) {
    body = await fetch(`http://127.0.0.1:${port}/`).then((x) => x.text(), () => "");
    if (!body.includes("hello")) await new Promise((res) => setTimeout(res, 200));
  }
  assert.match(body, /hello-from-fw-1/);
  await engine.setMetadata("fw-1", { ROLE: "db" });
  assert.is(await sh("fw-1", ". /etc/forkvm/metadata && echo $ROLE"), "db");
  await engine.reset("fw-1");
  assert.is(await sh("fw-1", ". /etc/forkvm/metadata && echo $ROLE"), "db");
}));

test("a forked VM survives SIGKILL of the creating process group", deadline(120_000, async () => {
  const script = `require("ts-node/register/transpile-only"); const { Engine } = require("./engine/engine");
    new Engine().fork({ template: "t", names: ["orphan"] }).then((r) => { console.log(r.failed.length ? "failed " + r.failed[0].error.message : "ready"); setInterval(() => {}, 1000); });`;
  const child = spawn(process.execPath, ["-e", script], { cwd: root, detached: true, stdio: ["ignore", "pipe", "inherit"], env: process.env });
  const line = await new Promise<string>((resolve) => child.stdout.once("data", (d) => resolve(String(d).trim())));
  assert.is(line, "ready");
  process.kill(-child.pid!, "SIGKILL");
  await new Promise((r) => child.once("close", r));
  assert.is(engine.vm("orphan").status, "running");
  assert.is(await sh("orphan", "hostname"), "orphan");
}));

test("children share memory: the sum of their PSS is well below the sum of their RSS", deadline(120_000, async () => {
  const r = await engine.fork({ template: "t", count: 5, prefix: "m", concurrency: 4 });
  assert.is(r.failed.length, 0);
  const s = engine.stats(r.children.map((c) => c.name));
  const rss = s.reduce((a, x) => a + x.rssMiB, 0);
  const pss = s.reduce((a, x) => a + x.pssMiB, 0);
  const shared = s.reduce((a, x) => a + x.sharedWithTemplateMiB, 0);
  console.log(`  5 children: RSS ${rss.toFixed(0)} MiB, PSS ${pss.toFixed(0)} MiB, shared with template ${shared.toFixed(0)} MiB`);
  assert.ok(pss < rss * 0.7, `PSS ${pss} vs RSS ${rss}`);
  assert.ok(s.every((x) => x.sharedWithTemplateMiB > 1));
}));

test("a full clone has its own memory and disk and does not hold its template", deadline(60_000, async () => {
  const r = await engine.fork({ template: "t", names: ["full-1"], clone: "full" });
  assert.is(r.failed.length, 0, r.failed.map((f) => f.error.message).join("; "));
  const vm = engine.vm("full-1");
  assert.is.not(vm.memoryPath, engine.template("t").memoryPath);
  assert.is(await sh("full-1", "cat /tmp/warm"), warm);
  assert.is(await sh("full-1", "cat /data/base.txt"), "base");
  const disk = (await import("node:child_process")).execFileSync("qemu-img", ["info", "-U", "--output=json", vm.diskPath!]).toString();
  assert.not.ok(JSON.parse(disk)["backing-filename"], "a full clone's disk has no backing file");
  assert.is(engine.stats(["full-1"])[0].sharedWithTemplateMiB, 0);
  assert.not.ok(engine.template("t").children.includes("full-1"));
}));

test("a child whose QEMU died shows as crashed, not running", deadline(30_000, async () => {
  const vm = engine.vm("m-5");
  process.kill(vm.pid!, "SIGKILL");
  for (let i = 0; i < 100 && isAlive(vm.pid, vm.token); i++) await new Promise((r) => setTimeout(r, 20));
  assert.is(engine.vm("m-5").status, "crashed");
  const err: any = await engine.exec("m-5", ["true"]).catch((e: any) => e);
  assert.is(err.code, "CONFLICT");
}));

test("a template with children is not removed unless forced; rm is idempotent", deadline(60_000, async () => {
  const err: any = await engine.remove(["t"]).catch((e: any) => e);
  assert.instance(err, ForkvmError);
  assert.is(err.code, "HAS_CHILDREN");
  assert.match(err.message, /c-1/);
  assert.is((await engine.remove(["m-5"]))[0].kind, "vm");
  assert.is((await engine.remove(["m-5"]))[0].kind, "absent");
}));

const cli = (args: string[], input?: string) =>
  new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
    const c = spawn(path.join(root, "bin", "forkvm"), args, { cwd: root, env: process.env, stdio: ["pipe", "pipe", "pipe"] });
    let stdout = "", stderr = "";
    c.stdout.on("data", (d) => (stdout += d));
    c.stderr.on("data", (d) => (stderr += d));
    c.stdin.end(input ?? "");
    c.on("close", (code) => resolve({ code, stdout, stderr }));
  });

test("forkvm exec passes argv verbatim and gives back stdout, stderr and the exit code", deadline(60_000, async () => {
  const r = await cli(["exec", "c-2", "--", "sh", "-c", 'printf "%s|" "$@"; echo err >&2; exit 7', "x", "a b", "$HOME", "*", "'q'"]);
  assert.is(r.code, 7);
  assert.is(r.stdout, "a b|$HOME|*|'q'|");
  assert.is(r.stderr, "err\n");
  const piped = await cli(["exec", "--stdin", "c-2", "--", "wc", "-c"], "hello");
  assert.is(piped.stdout.trim(), "5");
  const missing = await cli(["exec", "c-2", "--", "no-such-command"]);
  assert.is(missing.code, 127);
}));

test("forkvm ls --json lists the fleet; errors give exit codes and name what failed", deadline(60_000, async () => {
  const ls = JSON.parse((await cli(["--json", "ls"])).stdout);
  assert.ok(ls.vms.some((v: any) => v.name === "c-2" && v.status === "running" && v.template.name === "t"));
  assert.ok(ls.templates.some((t: any) => t.name === "t" && t.children.includes("c-2")));
  const bad = await cli(["fork", "t", "--count", "0"]);
  assert.is(bad.code, 1);
  assert.match(bad.stderr, /--count must be a whole number from 1 to 10000/);
  const nf = await cli(["--json", "inspect", "nope"]);
  assert.is(nf.code, 1);
  assert.is(JSON.parse(nf.stdout).error.code, "NOT_FOUND");
  const inv = await cli(["parent", "create", "Bad Name"]);
  assert.is(inv.code, 2);
  assert.match(inv.stderr, /Cannot create parent: name: must be lower-case letters, digits and/);
}));

test("forkvm doctor names the accelerator it will use and why", deadline(60_000, async () => {
  const r = await cli(["--json", "doctor"]);
  const d = JSON.parse(r.stdout);
  assert.ok(d.qemu.version && d.qemu.machine.startsWith("pc-i440fx-"));
  assert.ok(["kvm", "tcg"].includes(d.accel.accel), r.stdout);
  assert.ok(d.accel.reason.length > 10);
  // On a host whose KVM cannot run guest kernel code at speed (this project's build machines), TCG with a warning.
  if (d.accel.accel === "tcg" && fs.existsSync("/dev/kvm")) assert.match(d.accel.warning, /using TCG/);
  assert.is(d.memDir.type, "tmpfs");
  const table = await cli(["doctor"]);
  assert.match(table.stdout, /accelerator\s+│ (kvm|tcg): /);
}));

test("gc removes what an interrupted create left behind and nothing else", deadline(30_000, async () => {
  // A create whose process died after reserving the name: its reservation names a dead holder.
  const reserve = `const { Store } = require("./engine/state/store"); new Store(${JSON.stringify(engine.store.home)}, ${JSON.stringify(engine.store.memDir)}).reserve("vms", "half-made")`;
  execFileSync(process.execPath, ["-r", "ts-node/register/transpile-only", "-e", reserve], { cwd: root });
  const stray = path.join(engine.store.memDir, "vms-ghost.mem");
  fs.writeFileSync(stray, "x");
  const first = await engine.gc(60_000);
  assert.ok(first.includes("vms/half-made"), `its creator is gone, so at once: ${first.join()}`);
  assert.not.ok(first.includes(stray), "a file of no object waits a minute (a create may be about to claim it)");
  const removed = await engine.gc(0);
  assert.ok(removed.includes(stray), removed.join());
  assert.not.ok((await engine.gc(0)).includes(stray), "a second gc finds nothing of it");
  assert.is(engine.vm("c-2").status, "running");
  assert.ok(fs.existsSync(engine.template("t").memoryPath));
}));

test("a parent boots from a kernel, initrd and raw disk the user brings; the raw file is never written", deadline(180_000, async () => {
  const img = engine.template("t").shape;
  const raw = path.join(process.env.FORKVM_TEST_HOME ?? "/tmp", "user-disk.raw");
  const marker = Buffer.alloc(16 * 1048576);
  marker.write("USERDISK", 0);
  fs.writeFileSync(raw, marker);
  const before = sha(raw);
  const vm = await engine.createParent({ name: "byo", kernel: img.kernel, initrd: img.initrd, cmdline: img.cmdline, diskImage: raw, memoryMiB: 192, accel: "tcg" });
  assert.is(vm.status, "running");
  assert.is(await sh("byo", "head -c 8 /dev/vda"), "USERDISK");
  await sh("byo", "echo CHANGED | dd of=/dev/vda conv=notrunc 2>/dev/null && sync");
  assert.is(await sh("byo", "head -c 7 /dev/vda"), "CHANGED");
  assert.is(sha(raw), before);
  await engine.remove(["byo"]);
}));

test("a QEMU failure carries QEMU's own words and leaves nothing behind", deadline(60_000, async () => {
  const junk = path.join(process.env.FORKVM_TEST_HOME ?? "/tmp", "not-a-kernel");
  fs.writeFileSync(junk, "this is not a kernel");
  const err: any = await engine.createParent({ name: "broken", kernel: junk, initrd: junk, accel: "tcg", bootTimeoutS: 30 }).catch((e: any) => e);
  assert.instance(err, ForkvmError);
  assert.is(err.code, "QEMU", err.message);
  assert.ok(String(err.details.stderr).length > 0, err.message);
  assert.not.ok(engine.store.exists("vms", "broken"));
  assert.not.ok(fs.existsSync(engine.store.memoryPath("vms", "broken")));
}));

test("the serial console of a child answers with a shell", deadline(30_000, async () => {
  assert.match(await consoleEcho(path.join(engine.store.dir("vms", "c-3"), "console.sock")), /console-ok-42/);
}));

test("bad input names the field", deadline(30_000, async () => {
  const cases: Array<[() => Promise<unknown>, string]> = [
    [() => engine.createParent({ name: "bad", memoryMiB: 16 } as any), "memoryMiB"],
    [() => engine.createParent({ name: "bad", memoryMiB: 64, accel: "tcg" }), "memoryMiB"],
    [() => engine.createParent({ name: "bad", colour: "red" } as any), "colour"],
    [() => engine.fork({ template: "t", count: -1 }), "count"],
    [() => engine.fork({ template: "t", count: 1, macPrefix: "zz" }), "macPrefix"],
    [() => engine.createTemplate({ name: "x", parent: "p", source: "warm" as any }), "source"],
  ];
  for (const [fn, field] of cases) {
    const e: any = await fn().catch((x: any) => x);
    assert.instance(e, ForkvmError);
    assert.is(e.code, "INVALID_ARGUMENT", e.message);
    assert.is(e.details.field, field, e.message);
  }
  assert.not.ok(engine.store.exists("vms", "bad"));
}));

test.run();
