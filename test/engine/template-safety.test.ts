// Template safety on real QEMU (TCG here): a failed capture never destroys or strands its parent,
// templates survive a (simulated) host reboot and refuse a QEMU they were not captured with, and
// every QEMU runs under its seccomp sandbox. One small parent (128 MiB) booted from copies of the
// image's kernel and initrd; pure parts (memory image copy, checkpoint sockets) without QEMU first.
// Every object this suite makes is removed in `after`, even when a test fails.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { randomBytes } from "node:crypto";
import { spawn } from "node:child_process";
import { Engine } from "../../engine/engine";
import { buildDefaultImage, loadImage } from "../../engine/image";
import { ForkvmError } from "../../engine/errors";
import type { TemplateManifest } from "../../engine/state/manifest";
import { restoreMemory, saveMemoryImage, templateProblems } from "../../engine/instance/template-files";
import { installedQemu } from "../../engine/host";
import { receiveToFile, sendCheckpoint } from "../../engine/instance/checkpoint-io";
import { pollUntil } from "../../engine/util/poll";
import { deadline } from "../helpers/deadline";

const engine = new Engine();
const { store } = engine;
const test = suite("template safety");
const root = path.join(__dirname, "..", "..");
const scratch = fs.mkdtempSync(path.join(process.env.FORKVM_TEST_HOME ?? os.tmpdir(), "tsafe-"));
const kernel = path.join(scratch, "K");
const initrd = path.join(scratch, "I");
let imageFiles: { kernel: string; initrd: string; cmdline: string };
let warm = "";

const sh = async (vm: string, cmd: string) => {
  const r = await engine.exec(vm, ["sh", "-c", cmd], { timeoutMs: 30_000 });
  assert.is(r.exitCode, 0, `${vm}: ${cmd}: ${r.stderr}`);
  return r.stdout.toString().trim();
};
const rejects = async (p: Promise<unknown>): Promise<ForkvmError> => {
  try {
    await p;
  } catch (err) {
    assert.instance(err, ForkvmError, String(err));
    return err as ForkvmError;
  }
  assert.unreachable("expected a rejection");
  throw new Error("unreachable");
};
const withFault = async <T>(point: string, fn: () => Promise<T>): Promise<T> => {
  process.env.FORKVM_TEST_FAULT = point;
  try {
    return await fn();
  } finally {
    delete process.env.FORKVM_TEST_FAULT;
  }
};
/** Nothing of template `name` is left: no directory, no memory file, no stream. */
const noTemplate = (name: string) => {
  assert.not.ok(store.exists("templates", name), `templates/${name} is left`);
  const left = fs.existsSync(store.memDir) ? fs.readdirSync(store.memDir).filter((f) => f.startsWith(`templates-${name}.`)) : [];
  assert.equal(left, [], `left in ${store.memDir}`);
};
/** Every QEMU process whose command line points into this suite's home or memory directory. */
const qemuPids = () => fs.readdirSync("/proc").filter((p) => /^\d+$/.test(p)).map(Number).filter((pid) => {
  try {
    const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, "utf8");
    return cmd.includes("qemu") && (cmd.includes(store.home) || cmd.includes(store.memDir));
  } catch { return false; }
});
/** The guest's clock advances: it runs (is not left paused). */
const runs = async (vm: string) => {
  const a = Number((await sh(vm, "cat /proc/uptime")).split(" ")[0]);
  await new Promise((r) => setTimeout(r, 300));
  const b = Number((await sh(vm, "cat /proc/uptime")).split(" ")[0]);
  assert.ok(b > a, `${vm}'s clock stands still (${a} → ${b}): left paused`);
};

// ---------------------------------------------------------------------------------------------
// Without QEMU

/** A template manifest in a scratch home, for the pure tests. */
function fakeTemplate(home: string, memDir: string, name: string, memoryMiB: number): TemplateManifest {
  const dir = path.join(home, "templates", name);
  fs.mkdirSync(dir, { recursive: true });
  fs.mkdirSync(memDir, { recursive: true, mode: 0o700 });
  fs.writeFileSync(path.join(dir, "state.bin"), "state");
  const t = {
    version: 1, kind: "template", name, generation: "g1", createdAt: new Date().toISOString(), source: "running", parent: "pp",
    shape: { accel: "tcg", machine: "pc-i440fx-7.2", memoryMiB, vcpus: 1, kernel: "/k", initrd: "/i", cmdline: "", disk: false, nic: false },
    memoryPath: path.join(memDir, `templates-${name}.mem`), statePath: path.join(dir, "state.bin"), stateBytes: 5,
    stateSha256: "x", parentMac: "52:54:00:00:00:01", parentHostname: "pp", timings: {},
  } as TemplateManifest;
  fs.writeFileSync(path.join(dir, "manifest.json"), JSON.stringify(t));
  return t;
}

test("a memory image goes to disk with its zero pages as holes and comes back whole, atomically", deadline(30_000, async () => {
  const home = path.join(scratch, "pure-home");
  const memDir = path.join(scratch, "pure-mem");
  const t = fakeTemplate(home, memDir, "m", 8);
  const size = 8 * 1048576;
  const fd = fs.openSync(t.memoryPath, "w");
  fs.ftruncateSync(fd, size);
  const pages = [0, 1, 7, 500, 2047];
  for (const p of pages) fs.writeSync(fd, randomBytes(4096), 0, 4096, p * 4096);
  fs.closeSync(fd);
  const original = fs.readFileSync(t.memoryPath);
  const imagePath = path.join(path.dirname(t.statePath), "memory.img");
  const img = await saveMemoryImage(t.memoryPath, imagePath);
  assert.is(img.dataBytes, pages.length * 4096);
  const st = fs.statSync(imagePath);
  assert.is(st.size, size);
  assert.ok(st.blocks * 512 <= 16 * 4096 * 2, `${st.blocks * 512} bytes allocated for ${img.dataBytes} bytes of data`);
  assert.is(st.mode & 0o222, 0, "read-only");
  const withImage = { ...t, memoryImage: { path: imagePath, ...img } };
  fs.writeFileSync(path.join(home, "templates", "m", "manifest.json"), JSON.stringify(withImage));

  fs.rmSync(t.memoryPath);
  assert.equal(templateProblems(withImage), [], "a memory image that can be restored is not a problem");
  assert.ok(templateProblems(t).some((p) => p.includes("missing")), "without a copy on disk it is");
  assert.ok(restoreMemory(withImage));
  assert.ok(fs.readFileSync(t.memoryPath).equals(original), "restored byte for byte");
  assert.is(fs.statSync(t.memoryPath).mode & 0o222, 0, "restored read-only");
  assert.not.ok(restoreMemory(withImage), "nothing to do when it is there");

  // A damaged copy is refused and leaves nothing a child could map.
  fs.rmSync(t.memoryPath);
  fs.chmodSync(imagePath, 0o644);
  const w = fs.openSync(imagePath, "r+");
  fs.writeSync(w, Buffer.from("x"), 0, 1, 500 * 4096 + 17);
  fs.closeSync(w);
  const err = (() => { try { restoreMemory(withImage); } catch (e) { return e as ForkvmError; } })();
  assert.is(err?.code, "STATE");
  assert.match(err!.message, /checksum/);
  assert.equal(fs.readdirSync(memDir), [], "no half-made or damaged file in the memory directory");
}));

test("a QEMU other than the capturing one is a problem that says to capture again from the parent", () => {
  const home = path.join(scratch, "pure-home");
  const memDir = path.join(scratch, "pure-mem");
  const t = fakeTemplate(home, memDir, "v", 1);
  fs.writeFileSync(t.memoryPath, Buffer.alloc(1048576));
  const now = installedQemu();
  assert.equal(templateProblems(t), [], "a template of before (no QEMU recorded) is not refused");
  assert.equal(templateProblems({ ...t, qemu: now }), []);
  const old = { ...t, qemu: { ...now, version: "6.2.0", id: "other" } };
  const [gone] = templateProblems(old);
  assert.match(gone, /captured with QEMU 6\.2\.0 .* this host now runs QEMU /);
  assert.match(gone, /capture again from the parent \(pp no longer exists/);
  fs.mkdirSync(path.join(home, "vms", "pp"), { recursive: true });
  fs.writeFileSync(path.join(home, "vms", "pp", "manifest.json"), JSON.stringify({ state: "running" }));
  assert.match(templateProblems(old)[0], /capture again from the parent pp /);
});

test("checkpoint sockets: what QEMU migrates lands whole in a file; a file goes whole into QEMU's socket", deadline(10_000, async () => {
  const file = path.join(scratch, "rx.bin");
  const data = randomBytes(3 * 1048576 + 5);
  const rx = await receiveToFile(path.join(scratch, "rx.sock"), file);
  const c = net.createConnection(rx.uri.slice("unix:".length));
  c.end(data);
  assert.is(await rx.done, data.length);
  rx.close();
  assert.ok(fs.readFileSync(file).equals(data));
  assert.not.ok(fs.existsSync(path.join(scratch, "rx.sock")));

  // A stream that breaks leaves no file.
  const broken = path.join(scratch, "broken.bin");
  const rx2 = await receiveToFile(path.join(scratch, "rx2.sock"), broken);
  const c2 = net.createConnection(rx2.uri.slice("unix:".length), () => { c2.write(data.subarray(0, 1000)); setTimeout(() => rx2.close(), 50); });
  c2.on("error", () => undefined);
  await rx2.done.then(() => assert.unreachable("a broken stream resolved"), (e) => assert.is((e as ForkvmError).code, "MIGRATION"));
  assert.not.ok(fs.existsSync(broken));
  assert.equal(fs.readdirSync(scratch).filter((f) => f.startsWith("broken")), []);

  const got: Buffer[] = [];
  const sock = path.join(scratch, "tx.sock");
  const server = net.createServer((s) => s.on("data", (d) => got.push(d)));
  await new Promise<void>((r) => server.listen(sock, r));
  await sendCheckpoint(sock, { file });
  await pollUntil(() => (Buffer.concat(got).length === data.length ? true : undefined), { what: "receive", deadlineMs: 2000 });
  server.close();
  assert.ok(Buffer.concat(got).equals(data));
}));

// ---------------------------------------------------------------------------------------------
// On QEMU: one parent, q

test.before(deadline(600_000, async () => {
  await buildDefaultImage({});
  const image = await loadImage();
  imageFiles = { kernel: image.kernel, initrd: image.initrd, cmdline: image.cmdline };
  fs.copyFileSync(image.kernel, kernel);
  fs.copyFileSync(image.initrd, initrd);
  const q = await engine.createParent({
    name: "q", kernel, initrd, cmdline: image.cmdline, diskMiB: 64, memoryMiB: 128, accel: "tcg",
    init: ["head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \\n' > /tmp/warm"],
  });
  assert.is(q.status, "running");
  warm = await sh("q", "cat /tmp/warm");
  await sh("q", "echo precious > /data/keep && sync");
}));

test.after(async () => {
  delete process.env.FORKVM_TEST_FAULT;
  delete process.env.FORKVM_TEST_QEMU_VERSION;
  const pools = engine.listPools().map((p) => p.name);
  const names = [...pools, ...engine.listTemplates().map((t) => t.name), ...engine.listVms().map((v) => v.name)];
  await engine.remove(names, { force: true }).catch((e) => console.error("cleanup:", e));
  for (const pid of qemuPids()) { try { process.kill(pid, "SIGKILL"); } catch { /* gone */ } }
  fs.rmSync(scratch, { recursive: true, force: true });
});

test("a frozen capture whose parent's kernel is gone fails before it touches the parent", deadline(60_000, async () => {
  fs.rmSync(kernel);
  const err = await rejects(engine.createTemplate({ name: "tq", parent: "q", source: "frozen", quiesceTimeoutMs: 0 }));
  assert.is(err.code, "NOT_FOUND");
  assert.match(err.message, /^Cannot create template tq: the parent's kernel .*K is gone/);
  assert.is(engine.vm("q").status, "running");
  assert.ok(fs.existsSync(engine.vm("q").diskPath!), "the parent's disk is where it was");
  assert.is(await sh("q", "cat /data/keep"), "precious");
  await runs("q");
  noTemplate("tq");
  fs.copyFileSync(imageFiles.kernel, kernel);
}));

test("a frozen capture that fails while the parent is paused resumes it, whole", deadline(60_000, async () => {
  for (const point of ["frozen-paused", "frozen-saved"]) {
    const err = await withFault(point, () => rejects(engine.createTemplate({ name: "tq", parent: "q", source: "frozen", quiesceTimeoutMs: 0 })));
    assert.match(err.message, new RegExp(`test fault at ${point}`));
    assert.is(engine.vm("q").status, "running", point);
    await runs("q");
    assert.is(await sh("q", "cat /data/keep && cat /tmp/warm"), `precious\n${warm}`);
    noTemplate("tq");
  }
}));

/** Runs createTemplate in a separate process with FORKVM_TEST_FAULT=<point>:kill; resolves with how it ended. */
const killedCapture = (source: "frozen" | "running", point: string) => new Promise<string | null>((resolve, reject) => {
  const code = `new (require("./engine/engine").Engine)().createTemplate({ name: "tk", parent: "q", source: "${source}", quiesceTimeoutMs: 0 }).then(() => process.exit(0), (e) => { console.error(e.message); process.exit(1); })`;
  const c = spawn(process.execPath, ["-r", "ts-node/register/transpile-only", "-e", code], { cwd: root, env: { ...process.env, FORKVM_TEST_FAULT: `${point}:kill` }, stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  c.stderr.on("data", (d) => (stderr += d));
  c.on("error", reject);
  c.on("close", (status, signal) => resolve(signal ?? `exit ${status}: ${stderr}`));
});

test("a capture killed while the parent is paused leaves it `paused`, and gc resumes it", deadline(120_000, async () => {
  for (const [source, point] of [["frozen", "frozen-saved"], ["running", "running-snapshotted"]] as const) {
    assert.is(await killedCapture(source, point), "SIGKILL", point);
    assert.is(engine.vm("q").status, "paused", point);
    await engine.gc();
    assert.is(engine.vm("q").status, "running", point);
    await runs("q");
    assert.is(await sh("q", "cat /data/keep && cat /tmp/warm"), `precious\n${warm}`);
    await sh("q", `echo killed-${point} >> /data/after-faults && sync`);
    noTemplate("tk");
  }
}));

test("a running capture that fails in its pause resumes the parent; its disk keeps every write", deadline(90_000, async () => {
  const disk = engine.vm("q").diskPath;
  for (const point of ["running-paused", "running-snapshotted", "running-built"]) {
    const err = await withFault(point, () => rejects(engine.createTemplate({ name: "tq", parent: "q", source: "running", quiesceTimeoutMs: 0 })));
    assert.match(err.message, new RegExp(`test fault at ${point}`));
    assert.is(engine.vm("q").status, "running", point);
    assert.is(engine.vm("q").diskPath, disk, "the parent's manifest still names its disk");
    await runs("q");
    await sh("q", `echo ${point} >> /data/after-faults && sync`);
    noTemplate("tq");
  }
}));

let image: { ms: number; dataMiB: number; allocatedMiB: number } | undefined;

test("a running capture keeps the memory image on disk (sparse) and records its QEMU", deadline(90_000, async () => {
  const t = await engine.createTemplate({ name: "t", parent: "q", source: "running" });
  assert.ok(t.memoryImage, "memoryImage recorded");
  const st = fs.statSync(t.memoryImage!.path);
  assert.is(path.dirname(t.memoryImage!.path), store.dir("templates", "t"));
  assert.is(st.size, 128 * 1048576);
  assert.ok(st.blocks * 512 < st.size, "zero pages are holes");
  assert.is(t.qemu?.version, installedQemu().version);
  image = { ms: t.timings.memoryImageMs, dataMiB: t.memoryImage!.dataBytes / 1048576, allocatedMiB: (st.blocks * 512) / 1048576 };
  console.log(`  memory image of a 128 MiB guest: ${image.ms} ms, ${image.dataMiB.toFixed(1)} MiB of data, ${image.allocatedMiB.toFixed(1)} MiB on disk; downtime ${t.timings.downtimeMs} ms`);
  assert.equal(templateProblems(t, { deep: true }), []);
}));

test("every QEMU runs under its seccomp filter", deadline(120_000, async () => {
  const r = await engine.fork({ template: "t", names: ["n-1"] });
  assert.is(r.failed.length, 0, r.failed.map((f) => f.error.message).join("; "));
  const s = await engine.fork({ template: "t", names: ["s-1"], persistent: true });
  assert.is(s.failed.length, 0, s.failed.map((f) => f.error.message).join("; "));
  await sh("s-1", "echo mine > /data/s.txt && sync");
  const pool = await engine.applyPool({ name: "pl", template: "t", size: 1 });
  assert.equal(pool.errors, []);
  const vms = engine.listVms().filter((v) => v.status === "running");
  assert.equal(vms.map((v) => v.name).sort(), ["n-1", "pl-1", "q", "s-1"]);
  for (const v of vms) {
    const status = fs.readFileSync(`/proc/${v.pid}/status`, "utf8");
    assert.match(status, /^Seccomp:\s+2$/m, `${v.name} (pid ${v.pid})`);
  }
}));

test("after a simulated reboot, forks from the template work again and children restart from their disks", deadline(180_000, async () => {
  // The reboot: every QEMU gone at once, tmpfs emptied.
  const before = qemuPids();
  assert.ok(before.length >= 4, `QEMUs running: ${before.length}`);
  for (const pid of before) { try { process.kill(pid, "SIGKILL"); } catch { /* ended meanwhile */ } }
  await pollUntil(() => (qemuPids().length === 0 ? true : undefined), { what: "every QEMU gone", deadlineMs: 10_000 });
  fs.rmSync(store.memDir, { recursive: true, force: true });

  // What ls says: every VM crashed, the template whole (its memory image waits on disk).
  assert.equal(engine.listVms().map((v) => [v.name, v.status]).sort(), [["n-1", "crashed"], ["pl-1", "crashed"], ["q", "crashed"], ["s-1", "crashed"]]);
  const t = engine.template("t");
  assert.equal(templateProblems(t, { deep: true }), []);

  const r = await engine.fork({ template: "t", names: ["r-1"] });
  assert.is(r.failed.length, 0, r.failed.map((f) => f.error.message).join("; "));
  assert.is(await sh("r-1", "cat /tmp/warm"), warm, "the child reads the value in the parent's RAM at capture");
  assert.is(fs.statSync(t.memoryPath).mode & 0o222, 0, "the restored memory image is read-only");

  const s = await engine.start("s-1");
  assert.is(s.status, "running");
  assert.is(await sh("s-1", "cat /data/s.txt"), "mine", "a persistent child starts from its disk");
  const q = await engine.start("q");
  assert.is(q.status, "running");
  assert.is(await sh("q", "cat /data/keep"), "precious");
  assert.is(await sh("q", "cat /data/after-faults"), "killed-frozen-saved\nkilled-running-snapshotted\nrunning-paused\nrunning-snapshotted\nrunning-built", "the parent's disk kept every write across the failed captures");
  const pool = await engine.applyPool({ name: "pl", template: "t", size: 1 });
  assert.equal(pool.errors, []);
  assert.is(engine.vm("pl-1").status, "running", "the next pool apply brings the pool back");
  assert.is(await sh("pl-1", "cat /tmp/warm"), warm);
}));

test("a template captured by another QEMU version is refused before any fork, with the way out", deadline(30_000, async () => {
  const vms = engine.listVms().map((v) => v.name);
  process.env.FORKVM_TEST_QEMU_VERSION = "99.0.0";
  try {
    const err = await rejects(engine.fork({ template: "t", names: ["u-1"] }));
    assert.is(err.code, "STATE");
    assert.match(err.message, /^Cannot fork template t: it was captured with QEMU [0-9.]+ \(machine pc-i440fx-[0-9.]+, accel tcg\) and this host now runs QEMU 99\.0\.0/);
    assert.match(err.message, /capture again from the parent q /);
    assert.ok(templateProblems(engine.template("t")).length > 0);
    const pool = await rejects(engine.applyPool({ name: "pl", template: "t", size: 2 }));
    assert.match(pool.message, /capture again from the parent q/);
  } finally {
    delete process.env.FORKVM_TEST_QEMU_VERSION;
  }
  assert.equal(engine.listVms().map((v) => v.name), vms, "no child was made");
}));

test("a frozen capture that fails after the parent's QEMU quit leaves the parent stopped with its own files", deadline(120_000, async () => {
  const disk = engine.vm("q").diskPath!;
  const err = await withFault("frozen-consumed", () => rejects(engine.createTemplate({ name: "tq", parent: "q", source: "frozen", quiesceTimeoutMs: 0 })));
  assert.match(err.message, /parent q is stopped with its memory and disk/);
  assert.is(engine.vm("q").status, "stopped");
  assert.is(engine.vm("q").diskPath, disk);
  assert.ok(fs.statSync(disk).mode & 0o200, "the parent's disk is writable again");
  noTemplate("tq");
  await engine.start("q");
  assert.is(await sh("q", "cat /data/keep"), "precious");

  // And the same capture without the fault: the parent is consumed, its disk is the template's.
  const t = await engine.createTemplate({ name: "tq", parent: "q", source: "frozen" });
  assert.is(engine.vm("q").status, "consumed");
  assert.not.ok(fs.existsSync(disk), "the parent's own name of the disk is gone");
  assert.ok(fs.existsSync(t.diskPath!) && fs.existsSync(t.memoryImage!.path));
  const r = await engine.fork({ template: "tq", names: ["f-1"] });
  assert.is(r.failed.length, 0, r.failed.map((f) => f.error.message).join("; "));
  assert.is(await sh("f-1", "cat /data/keep"), "precious");
  if (image) console.log(`  (memory image: ${image.ms} ms, ${image.dataMiB.toFixed(1)} MiB)`);
}));

test.run();
