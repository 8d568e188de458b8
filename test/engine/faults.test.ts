// Fault injection on real QEMU (TCG): the caller SIGKILLed at named moments of parent create,
// frozen and running capture, a fork of 32 and a start; QEMU of a child, a parent and a builder
// killed; a truncated manifest, one of a newer forkvm, a simulated host reboot, `rm --force` racing
// a fork, two pool applies at once, gc alongside a fork. After each: what `ls` shows, which QEMU
// run, which files exist, what gc removes, and that a second gc removes nothing.
// The caller is this file run as a driver (FORKVM_FAULTS_DRIVER=<json>), killed by FORKVM_FAULT
// (engine/util/fault.ts) or by hooks the driver sets on QMP commands and manifest writes.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import * as fs from "node:fs";
import * as path from "node:path";
import { spawn } from "node:child_process";
import { Engine } from "../../engine/engine";
import { buildDefaultImage } from "../../engine/image";
import { ForkvmError } from "../../engine/errors";
import { collect, problems, type GcReport } from "../../engine/ops/lifecycle";
import { listQemus, type QemuProcess } from "../../engine/qemu/find";
import { Store, privateMemDir } from "../../engine/state/store";
import type { VmManifest } from "../../engine/state/manifest";
import { deadline } from "../helpers/deadline";

// ---------------------------------------------------------------------------------------------
// The driver: one engine operation in a process of its own, with kill hooks.

interface DriverJob {
  op: "parent" | "template" | "fork" | "start" | "lock";
  args: Record<string, unknown>;
  /** SIGKILL this process when a QMP command returns (optionally only with this `status` in its reply). */
  afterQmp?: { cmd: string; status?: string };
  /** SIGKILL this process just before it sends this QMP command. */
  beforeQmp?: string;
  /** SIGKILL this process after it writes a VM manifest in this state (or before its first VM manifest: "first"). */
  afterWriteVm?: string;
}

async function runDriver(job: DriverJob): Promise<void> {
  const die = () => process.kill(process.pid, "SIGKILL");
  const { Qmp } = await import("../../engine/qemu/qmp");
  const orig = Qmp.prototype.execute;
  Qmp.prototype.execute = async function (this: unknown, cmd: string, args?: unknown, ms?: number) {
    if (job.beforeQmp === cmd) die();
    const r = await (orig as (...a: unknown[]) => Promise<unknown>).call(this, cmd, args, ms);
    if (job.afterQmp?.cmd === cmd && (!job.afterQmp.status || (r as { status?: string })?.status === job.afterQmp.status)) die();
    return r;
  } as typeof orig;
  if (job.afterWriteVm) {
    const write = Store.prototype.writeVm;
    Store.prototype.writeVm = function (this: Store, m: VmManifest) {
      if (job.afterWriteVm === "first") die();
      write.call(this, m);
      if (job.afterWriteVm === m.state) die();
    };
  }
  const e = new Engine();
  if (job.op === "lock") await e.store.withLock("vms", job.args.name as string, async () => die());
  if (job.op === "parent") await e.createParent(job.args as never);
  else if (job.op === "template") await e.createTemplate(job.args as never);
  else if (job.op === "fork") {
    const r = await e.fork(job.args as never);
    process.stderr.write(`driver: forked ${r.children.length}, failed ${r.failed.length}${r.failed.length ? `: ${r.failed[0].error.message}` : ""}\n`);
  }
  else await e.start(job.args.name as string);
}

if (process.env.FORKVM_FAULTS_DRIVER) {
  runDriver(JSON.parse(process.env.FORKVM_FAULTS_DRIVER)).then(() => process.exit(0), (err) => {
    process.stderr.write(`driver: ${(err as Error).message}\n`);
    process.exit(3);
  });
} else {
  tests();
}

/** Runs a driver; resolves with how it ended (the signal when killed). */
function drive(job: DriverJob, env: Record<string, string> = {}): Promise<{ signal: NodeJS.Signals | null; code: number | null; stderr: string }> {
  return new Promise((resolve) => {
    const c = spawn(process.execPath, ["-r", "ts-node/register/transpile-only", __filename], {
      cwd: path.join(__dirname, "..", ".."), stdio: ["ignore", "ignore", "pipe"],
      env: { ...process.env, ...env, FORKVM_FAULTS_DRIVER: JSON.stringify(job) },
    });
    let stderr = "";
    c.stderr.on("data", (d) => (stderr += d));
    c.on("close", (code, signal) => resolve({ code, signal, stderr }));
  });
}

// ---------------------------------------------------------------------------------------------
// The suite.

function tests(): void {
  const engine = new Engine();
  const { store, ctx } = engine;
  const test = suite("faults");
  const sh = async (vm: string, cmd: string) => {
    const r = await engine.exec(vm, ["sh", "-c", cmd], { timeoutMs: 30_000 });
    assert.is(r.exitCode, 0, `${vm}: ${cmd}: ${r.stderr}`);
    return r.stdout.toString().trim();
  };
  const statuses = () => Object.fromEntries(engine.listVms().map((v) => [v.name, v.status]));
  const status = (name: string) => engine.listVms().find((v) => v.name === name)?.status;
  const qemusOfHome = (): QemuProcess[] => listQemus().filter((q) => q.dir?.startsWith(store.home + "/"));
  const qemuOf = (kind: "vms" | "templates", name: string) => qemusOfHome().filter((q) => q.dir === store.dir(kind, name) || q.dir!.startsWith(store.dir(kind, name) + "/"));
  const memFiles = () => { try { return fs.readdirSync(store.memDir).sort(); } catch { return []; } };
  const gc = async (): Promise<GcReport> => collect(ctx, 0);
  let warm = "";
  /** Two children of the fork of 32 that survive it, for the later tests. */
  let c1 = "";
  let c2 = "";

  /**
   * The end state is whole: every running VM's QEMU runs with its token and no other QEMU serves
   * this home; the memory directory holds exactly the files manifests name; no object directory
   * without a valid manifest other than `allowed`; no lock, lock record or trash left.
   */
  const assertWhole = (label: string, allowed: string[] = []) => {
    const vms = engine.listVms();
    const qemus = qemusOfHome();
    for (const v of vms) {
      const mine = qemus.filter((q) => q.dir === store.dir("vms", v.name));
      if (v.status === "running") assert.equal(mine.map((q) => q.token), [v.token], `${label}: ${v.name} runs its own QEMU`);
      else assert.equal(mine, [], `${label}: ${v.name} is ${v.status}: no QEMU`);
    }
    const vmDirs = new Set(vms.map((v) => store.dir("vms", v.name)));
    assert.equal(qemus.filter((q) => !vmDirs.has(q.dir!)).map((q) => q.dir), [], `${label}: no QEMU outside a VM`);
    const named = new Set<string>();
    for (const v of vms) for (const f of [v.memoryPath, v.diskPath]) if (f?.startsWith(store.memDir + "/")) named.add(path.basename(f));
    for (const t of engine.listTemplates()) named.add(path.basename(t.memoryPath));
    // A stopped non-persistent child names a delta disk it does not have (made at its next start).
    const present = memFiles();
    assert.equal(present.filter((f) => !named.has(f)), [], `${label}: memory directory holds only named files`);
    for (const v of vms) if (v.status === "running" && v.diskPath?.startsWith(store.memDir)) assert.ok(present.includes(path.basename(v.diskPath)), `${label}: ${v.name}'s delta disk`);
    assert.equal(problems(ctx).map((p) => `${p.kind}/${p.name}`).filter((p) => !allowed.includes(p)), [], `${label}: no half-made objects`);
    for (const k of ["vms", "templates", "pools"]) {
      const odd = fs.readdirSync(path.join(store.home, k)).filter((f) => f.includes(".lock") || f.startsWith(".trash-"));
      assert.equal(odd, [], `${label}: no locks or trash left in ${k}`);
    }
  };
  /** gc, then a second gc that finds nothing. */
  const gcTwice = async (label: string): Promise<GcReport> => {
    const r = await gc();
    const again = await gc();
    assert.equal([...again.removed, ...again.recovered], [], `${label}: a second gc finds nothing`);
    return r;
  };
  const removedObjects = (r: GcReport) => r.removed.filter((x) => /^(vms|templates|pools)\//.test(x)).sort();

  test.before(deadline(600_000, async () => {
    await buildDefaultImage({});
    const p = await engine.createParent({ name: "p", memoryMiB: 256, accel: "tcg", init: ["head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \\n' > /tmp/warm", "echo keep > /data/keep && sync"] });
    assert.is(p.status, "running");
    warm = await sh("p", "cat /tmp/warm");
    await engine.createTemplate({ name: "t", parent: "p", source: "running", quiesceTimeoutMs: 2000 });
    assertWhole("before");
  }));

  test.after(async () => {
    const names = [...engine.listPools().map((x) => x.name), ...engine.listTemplates().map((t) => t.name), ...engine.listVms().map((v) => v.name), ...problems(ctx).map((x) => x.name)];
    await engine.remove([...new Set(names)], { force: true }).catch((e) => console.error("cleanup:", e));
    for (const q of qemusOfHome()) { try { process.kill(q.pid, "SIGKILL"); } catch { /* gone */ } }
  });

  test("the memory directory is private: a wider one or another's is refused naming it (gc too); memory files never follow a link", async () => {
    const base = fs.mkdtempSync(path.join(store.memDir, "..", `faults-memdir-${process.pid}-`));
    try {
      const wide = path.join(base, "wide");
      fs.mkdirSync(wide, { mode: 0o755 });
      fs.chmodSync(wide, 0o755);
      const err = (() => { try { privateMemDir(wide); } catch (e) { return e as ForkvmError; } })();
      assert.is(err?.code, "HOST");
      assert.ok(err!.message.includes(wide) && /mode is 0755/.test(err!.message) && /chmod 700/.test(err!.message), err!.message);
      const shared = path.join(base, "shared");
      fs.mkdirSync(shared);
      fs.chmodSync(shared, 0o1777);
      assert.throws(() => privateMemDir(shared), (e: Error) => e.message.includes(`FORKVM_MEMDIR=${shared}/forkvm-`) && /mode is 1777/.test(e.message));
      // gc refuses it before touching anything: FORKVM_MEMDIR=/dev/shm holds other programs' files.
      fs.writeFileSync(path.join(shared, "vms-x.mem"), "someone's");
      const other = new Engine({ home: path.join(base, "h3"), memDir: shared });
      const gcErr = await collect(other.ctx, 0).then(() => undefined, (e) => e as ForkvmError);
      assert.is(gcErr?.code, "HOST");
      assert.ok(fs.existsSync(path.join(shared, "vms-x.mem")));
      const theirs = path.join(base, "theirs");
      fs.mkdirSync(theirs, { mode: 0o700 });
      fs.chownSync(theirs, 1234, 1234);
      const err2 = (() => { try { new Engine({ home: path.join(base, "h"), memDir: theirs }).store.init(); } catch (e) { return e as ForkvmError; } })();
      assert.is(err2?.code, "HOST");
      assert.match(err2!.message, /belongs to uid 1234/);
      const link = path.join(base, "link");
      fs.symlinkSync(wide, link);
      assert.throws(() => privateMemDir(link), /symbolic link/);
      const made = path.join(base, "made", "mem");
      privateMemDir(made);
      assert.is(fs.statSync(made).mode & 0o777, 0o700);
      // A link planted where a memory file goes is replaced, its target untouched.
      const s = new Store(path.join(base, "h2"), made);
      const target = path.join(base, "target");
      fs.writeFileSync(target, "");
      fs.symlinkSync(target, s.memoryPath("vms", "x"));
      s.createMemFile(s.memoryPath("vms", "x"), 1 << 20);
      assert.is(fs.statSync(target).size, 0, "the link's target was not grown");
      const st = fs.lstatSync(s.memoryPath("vms", "x"));
      assert.ok(st.isFile() && st.size === 1 << 20 && (st.mode & 0o777) === 0o600);
    } finally {
      fs.rmSync(base, { recursive: true, force: true });
    }
  });

  test("a lock whose holder was SIGKILLed is taken at once, not after the stale limit; the holder's record goes with it", deadline(30_000, async () => {
    const e = await drive({ op: "lock", args: { name: "locked" } });
    assert.is(e.signal, "SIGKILL", `exit ${e.code}: ${e.stderr}`);
    assert.ok(fs.existsSync(store.lockPath("vms", "locked")), "the dead holder's lock is there");
    assert.not.ok(store.isLocked("vms", "locked"), "but nobody holds it");
    const t0 = Date.now();
    await store.withLock("vms", "locked", async () => assert.ok(store.isLocked("vms", "locked")), 1000);
    assert.ok(Date.now() - t0 < 1000, `took ${Date.now() - t0} ms`);
    assert.equal(fs.readdirSync(path.join(store.home, "vms")).filter((f) => f.startsWith("locked")), []);
  }));

  test("a create or start names its process; once that process is gone the VM shows abandoned or interrupted", () => {
    const base = JSON.parse(fs.readFileSync(store.manifestPath("vms", "p"), "utf8")) as VmManifest;
    const dead = { pid: 1, start: -1, boot: "gone" };
    store.reserve("vms", "st-1");
    store.writeVm({ ...base, name: "st-1", state: "creating", pid: undefined });
    const mine = store.getVm("st-1");
    assert.is(mine.op?.what, "create");
    assert.is(mine.op?.by.pid, process.pid);
    assert.is(status("st-1"), "creating");
    store.writeVm({ ...mine, op: { ...mine.op!, by: dead } });
    assert.is(status("st-1"), "abandoned");
    store.writeVm({ ...mine, state: "starting", op: { what: "start", by: dead, since: "x" } });
    assert.is(status("st-1"), "interrupted");
    store.writeVm({ ...mine, state: "stopped" });
    assert.is(store.getVm("st-1").op, undefined, "a settled state drops the op");
    store.remove("vms", "st-1");
  });

  test("gc touches only files whose names forkvm owns; a damaged or newer manifest is left alone and reported", deadline(60_000, async () => {
    const foreign = ["other-program.shm", "vms-x.dat", "templates-Bad.mem", "vms-.mem"].map((f) => path.join(store.memDir, f));
    for (const f of foreign) fs.writeFileSync(f, "not forkvm's");
    const orphan = store.memoryPath("vms", "ghost"); // forkvm's name, no such VM: garbage
    fs.writeFileSync(orphan, "x");
    const r = await gcTwice("foreign files");
    assert.equal(r.removed, [orphan]);
    for (const f of foreign) { assert.ok(fs.existsSync(f), f); fs.rmSync(f); }
  }));

  test("SIGKILL of the caller creating a parent (reserved, recorded, booting): ls says abandoned; gc removes each with its QEMU", deadline(90_000, async () => {
    const moments: Array<[string, DriverJob, Record<string, string>]> = [
      ["pk-reserved", { op: "parent", args: { name: "pk-reserved", memoryMiB: 128, accel: "tcg" }, afterWriteVm: "first" }, {}],
      ["pk-recorded", { op: "parent", args: { name: "pk-recorded", memoryMiB: 128, accel: "tcg" } }, { FORKVM_FAULT: "boot:recorded" }],
      ["pk-booting", { op: "parent", args: { name: "pk-booting", memoryMiB: 128, accel: "tcg" } }, { FORKVM_FAULT: "boot:spawned" }],
    ];
    const ends = await Promise.all(moments.map(([, job, env]) => drive(job, env)));
    for (const [i, e] of ends.entries()) assert.is(e.signal, "SIGKILL", `${moments[i][0]}: exit ${e.code}: ${e.stderr}`);
    // What ls shows: a directory without a manifest is a problem `abandoned`; the others are VMs `abandoned`.
    assert.equal(problems(ctx).map((x) => [x.name, x.status, x.gc]), [["pk-reserved", "abandoned", "removes"]]);
    assert.is(status("pk-recorded"), "abandoned");
    assert.is(status("pk-booting"), "abandoned");
    assert.is(qemuOf("vms", "pk-recorded").length, 0);
    assert.is(qemuOf("vms", "pk-booting").length, 1, "the booting parent's QEMU runs although nothing recorded its pid... its token is");
    assert.ok(memFiles().includes("vms-pk-booting.mem"));
    const r = await gcTwice("parent create");
    assert.equal(removedObjects(r), ["vms/pk-booting", "vms/pk-recorded", "vms/pk-reserved"]);
    assert.equal(qemuOf("vms", "pk-booting"), []);
    assertWhole("after parent create faults");
  }));

  test("SIGKILL of the caller in a frozen capture (parent paused; checkpoint saved): gc resumes the parent with its RAM; no template", deadline(90_000, async () => {
    for (const [name, job] of [
      ["tf-paused", { afterQmp: { cmd: "stop" } }],
      ["tf-saved", { afterQmp: { cmd: "query-migrate", status: "completed" } }],
    ] as Array<[string, Partial<DriverJob>]>) {
      const e = await drive({ op: "template", args: { name, parent: "p", source: "frozen", quiesceTimeoutMs: 0 }, ...job });
      assert.is(e.signal, "SIGKILL", `exit ${e.code}: ${e.stderr}`);
      assert.ok(["paused", "running"].includes(status("p")!), `${name}: p is ${status("p")}`);
      assert.equal(problems(ctx).map((x) => [x.name, x.status]), [[name, "abandoned"]], name);
      const r = await gcTwice(name);
      assert.equal(removedObjects(r), [`templates/${name}`], name);
      assert.ok(r.recovered.some((l) => /resumed p/.test(l)), `${name}: ${r.recovered.join("; ")}`);
      assert.is(status("p"), "running");
      assert.is(await sh("p", "cat /tmp/warm"), warm, `${name}: the parent kept its RAM`);
      assertWhole(name);
    }
  }));

  test("SIGKILL of the caller in a running capture (parent postmigrate; builder running): gc resumes the parent, kills the builder", deadline(90_000, async () => {
    const a = await drive({ op: "template", args: { name: "tr-paused", parent: "p", source: "running", quiesceTimeoutMs: 0 }, afterQmp: { cmd: "query-migrate", status: "completed" } });
    assert.is(a.signal, "SIGKILL", `exit ${a.code}: ${a.stderr}`);
    let r = await gcTwice("running capture, paused");
    assert.equal(removedObjects(r), ["templates/tr-paused"]);
    assert.ok(r.recovered.some((l) => /resumed p/.test(l)), r.recovered.join("; "));
    assert.is(await sh("p", "cat /tmp/warm; echo; cat /data/keep"), `${warm}\nkeep`);
    // In the pause, after the parent's disk moved onto its new overlay, before it is resumed.
    const o = await drive({ op: "template", args: { name: "tr-swapped", parent: "p", source: "running", quiesceTimeoutMs: 0 }, afterQmp: { cmd: "blockdev-snapshot-sync" } });
    assert.is(o.signal, "SIGKILL", `exit ${o.code}: ${o.stderr}`);
    r = await gcTwice("running capture, disk swapped");
    assert.equal(removedObjects(r), ["templates/tr-swapped"]);
    assert.ok(r.recovered.some((l) => /resumed p/.test(l)), r.recovered.join("; "));
    assert.is(await sh("p", "echo swapped > /data/swapped && sync && cat /data/keep"), "keep", "the parent writes on its overlay");
    // The builder's migrate-incoming: the builder QEMU runs, recorded nowhere.
    const b = await drive({ op: "template", args: { name: "tr-builder", parent: "p", source: "running", quiesceTimeoutMs: 0 }, beforeQmp: "migrate-incoming" });
    assert.is(b.signal, "SIGKILL", `exit ${b.code}: ${b.stderr}`);
    assert.is(qemuOf("templates", "tr-builder").length, 1, "the builder runs");
    r = await gcTwice("running capture, builder");
    assert.equal(removedObjects(r), ["templates/tr-builder"]);
    assert.equal(qemuOf("templates", "tr-builder"), []);
    assert.is(status("p"), "running");
    await sh("p", "echo after > /data/after && sync");
    assertWhole("running capture faults");
  }));

  test("SIGKILL of a builder's QEMU: the capture fails, the parent runs on, nothing of the template is left", deadline(60_000, async () => {
    let killed = 0;
    const watch = setInterval(() => {
      for (const q of qemuOf("templates", "tb")) { try { process.kill(q.pid, "SIGKILL"); killed++; } catch { /* gone */ } }
    }, 5);
    const err = await engine.createTemplate({ name: "tb", parent: "p", source: "running", quiesceTimeoutMs: 0 }).then(() => undefined, (e) => e as ForkvmError);
    clearInterval(watch);
    assert.ok(killed >= 1, "the builder was killed");
    assert.ok(err instanceof ForkvmError, "the capture failed");
    assert.not.ok(store.exists("templates", "tb"));
    assert.is(status("p"), "running");
    assert.is(await sh("p", "cat /data/after"), "after");
    const r = await gcTwice("builder killed");
    assert.equal([...r.removed, ...r.recovered], []);
    assertWhole("builder killed");
  }));

  test("SIGKILL of the caller forking 32: finished children run on; the rest are abandoned and gc removes exactly them", deadline(180_000, async () => {
    const e = await drive({ op: "fork", args: { template: "t", count: 32, prefix: "f", concurrency: 4 } }, { FORKVM_FAULT: "fork:spawned@18" });
    assert.is(e.signal, "SIGKILL", `exit ${e.code}: ${e.stderr}`);
    const st = statuses();
    const kids = Object.keys(st).filter((n) => n.startsWith("f-"));
    assert.is(kids.length, 32, "all 32 were reserved before any fork");
    const running = kids.filter((n) => st[n] === "running");
    const abandoned = kids.filter((n) => st[n] === "abandoned");
    assert.is(running.length + abandoned.length, 32, JSON.stringify(st));
    assert.ok(running.length >= 10 && abandoned.length >= 14, `running ${running.length}, abandoned ${abandoned.length}`);
    const spawnedUnrecorded = abandoned.filter((n) => qemuOf("vms", n).length);
    assert.ok(spawnedUnrecorded.length >= 1, "some abandoned children have a QEMU");
    console.log(`  fork of 32 killed at the 18th spawn: ${running.length} running, ${abandoned.length} abandoned (${spawnedUnrecorded.length} with a QEMU)`);
    const r = await gcTwice("fork of 32");
    assert.equal(removedObjects(r), abandoned.map((n) => `vms/${n}`).sort());
    assert.equal(Object.keys(statuses()).filter((n) => n.startsWith("f-")).sort(), [...running].sort());
    assert.is(await sh(running[0], "cat /tmp/warm"), warm);
    assertWhole("fork of 32");
    [c1, c2] = running;
    await engine.remove(running.slice(2));
  }));

  test("SIGKILL of the caller starting a stopped child: interrupted; gc stops it (QEMU killed), start runs it", deadline(60_000, async () => {
    await engine.stop(c1);
    const e = await drive({ op: "start", args: { name: c1 } }, { FORKVM_FAULT: "fork:running" });
    assert.is(e.signal, "SIGKILL", `exit ${e.code}: ${e.stderr}`);
    assert.is(status(c1), "interrupted");
    assert.is(qemuOf("vms", c1).length, 1);
    const r = await gcTwice("start");
    assert.ok(r.recovered.some((l) => l.startsWith(`stopped ${c1}`)), r.recovered.join("; "));
    assert.is(status(c1), "stopped");
    assertWhole("start interrupted");
    await engine.start(c1);
    assert.is(await sh(c1, "hostname"), c1);
  }));

  test("SIGKILL of a child's QEMU: crashed; gc removes nothing; start forks it again", deadline(60_000, async () => {
    process.kill(engine.vm(c2).pid!, "SIGKILL");
    await new Promise((r) => setTimeout(r, 200));
    assert.is(status(c2), "crashed");
    const r = await gcTwice("child killed");
    assert.equal([...r.removed, ...r.recovered], []);
    assertWhole("child killed");
    await engine.start(c2);
    assert.is(await sh(c2, "hostname"), c2);
  }));

  test("a truncated manifest and one of a newer forkvm: reported, left alone by gc (QEMU and files too); rm removes them", deadline(60_000, async () => {
    const r0 = await engine.fork({ template: "t", names: ["bad-1", "new-1"] });
    assert.is(r0.failed.length, 0);
    const file = store.manifestPath("vms", "bad-1");
    fs.writeFileSync(file, fs.readFileSync(file, "utf8").slice(0, 100));
    const newer = store.manifestPath("vms", "new-1");
    fs.writeFileSync(newer, JSON.stringify({ ...JSON.parse(fs.readFileSync(newer, "utf8")), version: 2, futureField: { x: 1 } }));
    const probs = problems(ctx);
    assert.equal(probs.map((x) => [x.name, x.status, x.gc]), [["bad-1", "damaged", "leaves"], ["new-1", "unknown-version", "leaves"]]);
    assert.match(probs[1].message, /newer forkvm \(manifest version 2; this forkvm reads version 1\)/);
    assert.not.ok(engine.listVms().some((v) => v.name === "bad-1" || v.name === "new-1"));
    const r = await gcTwice("damaged and newer");
    assert.equal(r.removed, []);
    assert.equal(r.left.map((x) => x.object).sort(), ["vms/bad-1", "vms/new-1"]);
    assert.is(qemuOf("vms", "bad-1").length, 1, "its QEMU runs on");
    assert.ok(memFiles().includes("vms-new-1.qcow2"), "its delta disk is kept");
    await engine.remove(["bad-1", "new-1"]);
    assert.equal(qemuOf("vms", "bad-1"), []);
    assert.equal(qemuOf("vms", "new-1"), []);
    assertWhole("damaged and newer removed");
  }));

  test("rm --force of a template racing a fork: the template and every child go, no QEMU or file is left", deadline(90_000, async () => {
    await engine.createTemplate({ name: "t2", parent: "p", source: "running", quiesceTimeoutMs: 0 });
    const forking = engine.fork({ template: "t2", count: 8, prefix: "race", concurrency: 2 });
    // rm once two children run and others are on their way.
    for (const until = Date.now() + 30_000; Date.now() < until && engine.listVms().filter((v) => v.name.startsWith("race-") && v.status === "running").length < 2;) await new Promise((r) => setTimeout(r, 20));
    const removed = await engine.remove(["t2"], { force: true });
    const forked = await forking;
    assert.ok(removed[0].kind === "template");
    assert.ok(removed[0].removed.length > 1, "rm took children with it");
    console.log(`  rm raced the fork: it removed ${removed[0].removed.length - 1} children; the fork reported ${forked.children.length} forked, ${forked.failed.length} failed`);
    assert.not.ok(store.exists("templates", "t2"));
    assert.equal(engine.listVms().filter((v) => v.template?.name === "t2").map((v) => v.name), []);
    assert.equal(qemusOfHome().filter((q) => /\/race-\d+$/.test(q.dir!)), []);
    assert.equal(memFiles().filter((f) => f.startsWith("templates-t2.") || f.startsWith("vms-race-")), []);
    const r = await gcTwice("rm racing fork");
    assert.equal([...r.removed, ...r.recovered], []);
    assertWhole("rm racing fork");
  }));

  test("two pool applies at once: one waits for the other's lock; the pool has its size, no duplicate; gc alongside a fork removes nothing", deadline(90_000, async () => {
    const apply = () => engine.applyPool({ name: "pool1", template: "t", size: 3 });
    let gcs = 0;
    let collecting = true;
    const removedMeanwhile: string[] = [];
    const gcLoop = (async () => { while (collecting) { const r = await gc(); removedMeanwhile.push(...r.removed, ...r.recovered); gcs++; } })();
    const [a, b] = await Promise.all([apply(), apply()]);
    collecting = false;
    await gcLoop;
    assert.equal([...a.errors, ...b.errors], []);
    const kids = engine.listVms().filter((v) => v.pool?.name === "pool1");
    assert.equal(kids.map((k) => k.name).sort(), ["pool1-1", "pool1-2", "pool1-3"]);
    assert.ok(kids.every((k) => k.status === "running"));
    assert.equal(removedMeanwhile, [], `${gcs} gc runs during the applies removed nothing`);
    assertWhole("two applies");
    await engine.removePool("pool1");
  }));

  test("SIGKILL of a parent's QEMU: crashed; gc removes nothing; start boots it from its disk, warm again", deadline(120_000, async () => {
    process.kill(engine.vm("p").pid!, "SIGKILL");
    await new Promise((r) => setTimeout(r, 200));
    assert.is(status("p"), "crashed");
    const r = await gcTwice("parent killed");
    assert.equal([...r.removed, ...r.recovered], []);
    assertWhole("parent killed");
    await engine.start("p");
    assert.is(await sh("p", "cat /data/keep /data/after /data/swapped"), "keep\nafter\nswapped", "what it wrote after each interrupted capture is on its disk");
    warm = await sh("p", "cat /tmp/warm");
  }));

  test("SIGKILL of the caller in a frozen capture after the parent is consumed, before the template: gc gives the parent back", deadline(120_000, async () => {
    const e = await drive({ op: "template", args: { name: "tf-consumed", parent: "p", source: "frozen", quiesceTimeoutMs: 0 }, afterWriteVm: "consumed" });
    assert.is(e.signal, "SIGKILL", `exit ${e.code}: ${e.stderr}`);
    assert.is(status("p"), "consumed");
    const r = await gcTwice("frozen, consumed");
    assert.ok(r.recovered.some((l) => /gave p back/.test(l)), r.recovered.join("; "));
    assert.equal(removedObjects(r), ["templates/tf-consumed"]);
    assert.is(status("p"), "stopped");
    assertWhole("frozen, consumed");
    await engine.start("p");
    assert.is(await sh("p", "cat /data/keep /data/after"), "keep\nafter", "the parent's disk is whole");
  }));

  test("a simulated host reboot (every QEMU killed, the memory directory emptied): ls is truthful, gc removes nothing", deadline(60_000, async () => {
    for (const q of qemusOfHome()) process.kill(q.pid, "SIGKILL");
    await new Promise((r) => setTimeout(r, 300));
    for (const f of memFiles()) fs.rmSync(path.join(store.memDir, f));
    const st = statuses();
    assert.ok(Object.values(st).every((s) => s === "crashed" || s === "stopped"), JSON.stringify(st));
    assert.is(st.p, "crashed");
    assert.equal(qemusOfHome(), []);
    assert.ok(engine.listTemplates().some((t) => t.name === "t"), "the template is still listed");
    const r = await gcTwice("reboot");
    assert.equal([...r.removed, ...r.recovered], []);
    assert.equal(problems(ctx), []);
  }));

  test.run();
}
