// Limits and admission control (issue 8, items 7 and 9). Pure decisions first (no QEMU): what a
// fork needs and what is short, the host settings, the cgroup layout, the capped logs. Then, on
// one parent (128 MiB, 64 MiB disk, TCG) frozen into a template: refusals that start and reserve
// nothing, a batch that stops after K failures, capped CPU/memory/disk I/O, a console flood, a
// child filling its disk. Every VM this suite starts is removed in `after`, even on failure.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { Engine } from "../../engine/engine";
import { buildDefaultImage } from "../../engine/image";
import { ForkvmError } from "../../engine/errors";
import { admitFork, demandOf, hostSettings, shortages, type ForkDemand, type HostRoom } from "../../engine/ops/admission";
import { HostSettings } from "../../engine/spec";
import { cgroupSupport, cgroupDirs, findLayout, limitFiles } from "../../engine/qemu/cgroup";
import { qemuArgv, throttleOpts, vmPaths } from "../../engine/qemu/argv";
import { consoleLogBytes, isAlive, QEMU_LOG_BYTES, spawnQemu, tail } from "../../engine/qemu/process";
import { pollUntil } from "../../engine/util/poll";
import { qemusUnder } from "../../engine/qemu/find";
import { deadline } from "../helpers/deadline";
import { consoleEcho } from "../helpers/console";

// Small console logs, so a few seconds of printing fill several of them (read at each spawn).
const CONSOLE_KIB = 64;
process.env.FORKVM_CONSOLE_LOG_KIB = String(CONSOLE_KIB);

const engine = new Engine();
const home = engine.store.home;
const test = suite("limits and admission");
const sh = async (vm: string, cmd: string, timeoutMs = 60_000) => {
  const r = await engine.exec(vm, ["sh", "-c", cmd], { timeoutMs });
  return { code: r.exitCode, out: r.stdout.toString().trim(), err: r.stderr.toString().trim() };
};
const ok = async (vm: string, cmd: string, timeoutMs?: number) => {
  const r = await sh(vm, cmd, timeoutMs);
  assert.is(r.code, 0, `${vm}: ${cmd}: ${r.err}`);
  return r.out;
};
const errorOf = async (p: Promise<unknown>): Promise<ForkvmError> => {
  try { await p; } catch (err) { if (err instanceof ForkvmError) return err; throw err; }
  throw new Error("expected a ForkvmError");
};
/**
 * deadline(), and a ForkvmError thrown by the test becomes a plain Error: uvu 0.5 reads an
 * error's `details` as its own diff text, and an object there ends the whole suite silently.
 */
const guarded = <T>(ms: number, fn: () => Promise<T>) => deadline(ms, async () => {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof ForkvmError) throw new Error(`${err.code}: ${err.message}`);
    throw err;
  }
});
const p50 = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
/** CPU seconds a process has used (utime + stime). */
const cpuSeconds = (pid: number) => {
  const f = fs.readFileSync(`/proc/${pid}/stat`, "utf8").slice(fs.readFileSync(`/proc/${pid}/stat`, "utf8").lastIndexOf(")") + 2).split(" ");
  return (Number(f[11]) + Number(f[12])) / 100;
};
const settingsFile = path.join(home, "host.json");
const tokens: string[] = [];

// ---------------------------------------------------------------------------------------------
// Pure

const shape = { accel: "tcg" as const, machine: "pc-i440fx-7.2", memoryMiB: 256, vcpus: 1, kernel: "k", initrd: "i", cmdline: "", disk: true, nic: true };
const room: HostRoom = { memAvailableMiB: 9.8 * 1024, memDir: { path: "/dev/shm/x", freeMiB: 20_000 }, stateDir: { path: "/home/x", freeMiB: 50_000 }, runningVms: 3 };
const defaults = HostSettings.parse({});

test("admission: 500 children of 256 MiB on a host with 9.8 GiB available are refused with the figures", () => {
  const d: ForkDemand = { template: { name: "web-t", shape, diskPath: "/t/disk.qcow2" }, count: 500, persistent: false, clone: "linked", measuredPrivateMiB: 31 };
  const short = shortages(d, room, defaults);
  assert.equal(short.map((s) => s.resource), ["memory"]);
  assert.is(short[0].text, "needs ~15.2 GiB of memory (500 × ~31 MiB), 9.8 GiB available of which 256 MiB stay for the host");
  // The model (no children measured): QEMU's overhead + the guest pages a fresh child writes.
  const model = demandOf({ ...d, measuredPrivateMiB: undefined });
  assert.is(model.basis, "model");
  assert.ok(model.perChildMiB > 40 && model.perChildMiB < 60, String(model.perChildMiB));
  // Delta disks count in tmpfs (non-persistent) or in the state directory (persistent), not both.
  assert.ok(model.tmpfsMiB > 0 && model.diskMiB === 0);
  const persistent = demandOf({ ...d, persistent: true });
  assert.ok(persistent.diskMiB > 0 && persistent.tmpfsMiB === 0);
});

test("admission: every shortage is named at once: tmpfs, disk, the host's maximum of VMs, cgroups", () => {
  const d: ForkDemand = { template: { name: "t", shape, diskPath: "/t/d" }, count: 10, persistent: false, clone: "full" };
  const tight: HostRoom = { memAvailableMiB: 100, memDir: { path: "/dev/shm/x", freeMiB: 50 }, stateDir: { path: "/h", freeMiB: 1 }, runningVms: 995, cgroupsMissing: "limits.cpuPercent needs cgroups: none here" };
  const short = shortages(d, tight, defaults);
  assert.equal(short.map((s) => s.resource), ["memory", "tmpfs", "vms", "cgroups"]);
  assert.match(short[1].text, /^needs ~2\.5 GiB of tmpfs in \/dev\/shm\/x, 50 MiB free$/); // 10 full memory copies
  assert.match(short[2].text, /^10 more VMs would pass the host's maximum: it runs 995 forkvm VMs of at most 1000 \(maxVms in host\.json, or FORKVM_MAX_VMS\)$/);
  assert.equal(shortages({ ...d, count: 1, clone: "linked", persistent: true }, { ...tight, memAvailableMiB: 1000, stateDir: { path: "/h", freeMiB: 0 }, cgroupsMissing: undefined }, defaults).map((s) => s.resource), ["disk"]);
  assert.equal(shortages({ ...d, count: 5, clone: "linked" }, room, defaults), []);
});

test("host settings: defaults, then <home>/host.json, then the environment; bad values name the file or variable", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "forkvm-settings-"));
  try {
    assert.equal(hostSettings(dir, {}), { maxVms: 1000, maxConsecutiveFailures: 3, memoryReserveMiB: 256 });
    fs.writeFileSync(path.join(dir, "host.json"), JSON.stringify({ maxVms: 40, maxConsecutiveFailures: 5 }));
    assert.equal(hostSettings(dir, {}), { maxVms: 40, maxConsecutiveFailures: 5, memoryReserveMiB: 256 });
    assert.equal(hostSettings(dir, { FORKVM_MAX_VMS: "7", FORKVM_MEMORY_RESERVE_MIB: "0" }), { maxVms: 7, maxConsecutiveFailures: 5, memoryReserveMiB: 0 });
    for (const [env, field] of [[{ FORKVM_MAX_VMS: "0" }, "FORKVM_MAX_VMS"], [{ FORKVM_MAX_CONSECUTIVE_FAILURES: "two" }, "FORKVM_MAX_CONSECUTIVE_FAILURES"]] as const) {
      try { hostSettings(dir, env); assert.unreachable(); } catch (err) {
        assert.instance(err, ForkvmError);
        assert.is((err as ForkvmError).code, "INVALID_ARGUMENT");
        assert.is((err as ForkvmError).details.field, field);
      }
    }
    fs.writeFileSync(path.join(dir, "host.json"), JSON.stringify({ maxVMs: 3 }));
    try { hostSettings(dir, {}); assert.unreachable(); } catch (err) {
      assert.is((err as ForkvmError).code, "INVALID_ARGUMENT");
      assert.match((err as ForkvmError).message, /host\.json: maxVMs: unknown field/);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("cgroup layout: v2 next to this process's cgroup (or at the root), else v1 nested under it; the files written", () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "forkvm-cg-"));
  try {
    const v2 = path.join(tmp, "v2");
    fs.mkdirSync(path.join(v2, "user.slice", "s.scope"), { recursive: true });
    fs.writeFileSync(path.join(v2, "user.slice", "cgroup.controllers"), "cpuset cpu io memory pids\n");
    fs.writeFileSync(path.join(v2, "cgroup.controllers"), "cpuset cpu io memory pids\n");
    const mi2 = `30 23 0:26 / ${v2} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate`;
    assert.equal(findLayout(["cpu", "memory"], mi2, "0::/user.slice/s.scope\n").layout, { version: 2, bases: { cpu: `${v2}/user.slice/forkvm`, memory: `${v2}/user.slice/forkvm` } });
    assert.equal(findLayout(["cpu"], mi2, "0::/\n").layout, { version: 2, bases: { cpu: `${v2}/forkvm` } });
    // This host's shape: cgroup2 with no cpu/memory (hybrid), v1 cpu and memory hierarchies.
    fs.writeFileSync(path.join(v2, "user.slice", "cgroup.controllers"), "hugetlb\n");
    const mi1 = `${mi2}\n32 31 0:29 / ${tmp}/cpu rw - cgroup cgroup rw,cpu\n35 31 0:32 / ${tmp}/memory rw - cgroup cgroup rw,memory`;
    const r = findLayout(["cpu", "memory"], mi1, "4:memory:/api/abc\n1:cpu:/\n0::/user.slice/s.scope\n");
    assert.equal(r.layout, { version: 1, bases: { cpu: `${tmp}/cpu/forkvm`, memory: `${tmp}/memory/api/abc/forkvm` } });
    assert.equal(limitFiles(r.layout!, "tok", { cpuPercent: 50, memoryMiB: 256 }), [
      [`${tmp}/cpu/forkvm/tok/cpu.cfs_period_us`, "100000"], [`${tmp}/cpu/forkvm/tok/cpu.cfs_quota_us`, "50000"],
      [`${tmp}/memory/api/abc/forkvm/tok/memory.limit_in_bytes`, String(256 * 1048576)],
    ]);
    assert.equal(limitFiles({ version: 2, bases: { cpu: "/c/forkvm" } }, "tok", { cpuPercent: 250 }), [["/c/forkvm/tok/cpu.max", "250000 100000"]]);
    assert.match(findLayout(["memory"], mi2.replace("cgroup2 cgroup2", "tmpfs tmpfs"), "0::/\n").reason!, /no cgroup2 file system is mounted, and no cgroup v1 memory hierarchy/);
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});

test("argv: the console log goes to the capper's descriptor, disk limits become -drive throttling", () => {
  assert.is(throttleOpts(undefined), "");
  assert.is(throttleOpts({ iops: 200, bps: 1048576, cpuPercent: 5 }), ",throttling.iops-total=200,throttling.bps-total=1048576");
  const argv = qemuArgv(shape, { token: "t1", dir: "/v", memory: { path: "/m", share: false }, diskPath: "/d.qcow2", limits: { bps: 4096 } });
  assert.ok(argv.some((a) => a.includes("logfile=/dev/fd/3")), "console log on fd 3");
  assert.not.ok(argv.some((a) => a.includes("console.log")), "never a plain file");
  assert.ok(argv.some((a) => a.startsWith("file=/d.qcow2,") && a.endsWith(",throttling.bps-total=4096")));
});

test("tail reads a capped log across its rotation", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "forkvm-tail-"));
  try {
    const f = path.join(dir, "console.log");
    assert.is(tail(f), "");
    fs.writeFileSync(`${f}.1`, "a\nb\nc\n");
    fs.writeFileSync(f, "d\n");
    assert.is(tail(f, 3), "b\nc\nd");
    fs.rmSync(f);
    assert.is(tail(f, 2), "b\nc");
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("a process that floods its stderr and console descriptor keeps qemu.log and console.log under their caps (a stand-in QEMU)", guarded(60_000, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "forkvm-flood-"));
  const fake = path.join(dir, "flood");
  fs.writeFileSync(fake, "#!/bin/sh\nyes stderr-flood | head -c 1500000 >&2\nyes console-flood | head -c 1500000 >&3\necho last-words >&2\nexec sleep 30\n", { mode: 0o755 });
  process.env.FORKVM_QEMU = fake;
  let pid = 0;
  try {
    pid = await spawnQemu(dir, ["-name", "forkvm-flood1,debug-threads=off"]);
  } finally {
    delete process.env.FORKVM_QEMU;
  }
  try {
    const p = vmPaths(dir);
    await pollUntil(() => (fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").startsWith("sleep") && tail(p.log, 1, 0).endsWith("last-words") ? true : undefined), { what: "the flood", deadlineMs: 30_000 });
    const bytes = (f: string) => [f, `${f}.1`].reduce((n, x) => n + (fs.existsSync(x) ? fs.statSync(x).size : 0), 0);
    assert.ok(bytes(p.log) <= 2 * QEMU_LOG_BYTES && bytes(p.log) >= QEMU_LOG_BYTES, `qemu.log: ${bytes(p.log)} bytes`);
    assert.ok(bytes(p.consoleLog) <= 2 * consoleLogBytes() && bytes(p.consoleLog) >= consoleLogBytes(), `console.log: ${bytes(p.consoleLog)} bytes`);
    assert.match(tail(p.consoleLog, 2, 0), /console-flood\n[a-z-]*$/);
  } finally {
    if (pid) process.kill(pid, "SIGKILL");
    await new Promise((r) => setTimeout(r, 100));
    fs.rmSync(dir, { recursive: true, force: true });
  }
}));

// ---------------------------------------------------------------------------------------------
// On QEMU

// forkvm's cgroup directories this suite makes (removed again in `after` if it made them).
const where = findLayout(["cpu", "memory"], fs.readFileSync("/proc/self/mountinfo", "utf8"), fs.readFileSync("/proc/self/cgroup", "utf8")).layout;
const madeBases = where ? [...new Set(Object.values(where.bases))].filter((b) => !fs.existsSync(b)) : [];
const cg = cgroupSupport(["cpu", "memory"]);
const mine = () => qemusUnder(home);

test.before(guarded(600_000, async () => {
  await buildDefaultImage({});
  const p = await engine.createParent({ name: "lp", memoryMiB: 128, diskMiB: 64, accel: "tcg", init: ["echo warm > /tmp/warm"] });
  assert.is(p.status, "running");
  // The boot's console output is in the capped log, as the boot failure message quotes it.
  assert.ok(tail(vmPaths(engine.store.dir("vms", "lp")).consoleLog, 10).length > 0, "boot output in console.log");
  await engine.createTemplate({ name: "lt", parent: "lp", source: "frozen" });
}));

test.after(async () => {
  delete process.env.FORKVM_QEMU;
  fs.rmSync(settingsFile, { force: true });
  const names = [...engine.listTemplates().map((t) => t.name), ...engine.listVms().map((v) => v.name)];
  await engine.remove(names, { force: true }).catch((e) => console.error("cleanup:", e));
  // A cgroup goes once its last process (a log capper, a moment after QEMU) has left it.
  const left = () => tokens.flatMap((t) => (cg.layout ? cgroupDirs(cg.layout, t) : [])).filter((d) => fs.existsSync(d));
  for (let i = 0; i < 100 && left().length; i++) {
    for (const d of left()) try { fs.rmdirSync(d); } catch { /* still in use */ }
    await new Promise((r) => setTimeout(r, 30));
  }
  for (const d of left()) console.error(`cleanup: cgroup ${d} left`);
  for (const b of madeBases) try { fs.rmdirSync(b); } catch { /* another forkvm uses it */ }
});

test("a fork of 10,000 is refused with the numbers: no QEMU started, nothing reserved", guarded(30_000, async () => {
  const before = { vms: engine.store.names("vms"), qemus: mine().length, shm: fs.readdirSync(engine.store.memDir).sort() };
  const err = await errorOf(engine.fork({ template: "lt", count: 10_000 }));
  assert.is(err.code, "HOST");
  assert.match(err.message, /^Cannot fork 10000 children of lt: needs ~\d+(\.\d)? GiB of memory \(10000 × ~\d+(\.\d)? MiB\), \d+(\.\d)? GiB available/);
  assert.match(err.message, /10000 more VMs would pass the host's maximum: it runs \d+ forkvm VMs of at most 1000/);
  console.log(`  ${err.message}`);
  const need = (err.details.shortages as Array<{ resource: string; need: number; available: number }>).find((s) => s.resource === "memory")!;
  assert.ok(need.need > need.available, JSON.stringify(need));
  assert.equal(engine.store.names("vms"), before.vms);
  assert.is(mine().length, before.qemus);
  assert.equal(fs.readdirSync(engine.store.memDir).sort(), before.shm);
}));

test("a fork past the host's maximum of VMs (host.json maxVms) is refused before anything starts", guarded(30_000, async () => {
  fs.writeFileSync(settingsFile, JSON.stringify({ maxVms: 1 }));
  try {
    const err = await errorOf(engine.fork({ template: "lt", count: 2, prefix: "over" }));
    assert.is(err.code, "HOST");
    assert.match(err.message, /^Cannot fork 2 children of lt: 2 more VMs would pass the host's maximum: it runs \d+ forkvm VMs of at most 1 \(maxVms in host\.json, or FORKVM_MAX_VMS\)$/);
    assert.equal(engine.store.names("vms").filter((n) => n.startsWith("over")), []);
  } finally {
    fs.rmSync(settingsFile, { force: true });
  }
}));

test("a batch whose forks all fail stops after maxConsecutiveFailures; the rest are not attempted and leave nothing", guarded(60_000, async () => {
  // A QEMU that cannot start machines (it reports the real version, so the template checks out
  // whole): every child fails alike.
  const fake = path.join(home, "broken-qemu");
  fs.writeFileSync(fake, "#!/bin/sh\n[ \"$1\" = --version ] && exec qemu-system-x86_64 --version\necho 'simulated: cannot initialise the machine' >&2\nexit 1\n", { mode: 0o755 });
  process.env.FORKVM_QEMU = fake;
  const t0 = Date.now();
  let r;
  try {
    r = await engine.fork({ template: "lt", count: 10, prefix: "doomed", concurrency: 1 });
  } finally {
    delete process.env.FORKVM_QEMU;
  }
  assert.is(r.children.length, 0);
  assert.is(r.failed.length, 10);
  assert.equal(r.notAttempted, ["doomed-4", "doomed-5", "doomed-6", "doomed-7", "doomed-8", "doomed-9", "doomed-10"]);
  for (const f of r.failed.slice(0, 3)) assert.match(f.error.message, /simulated: cannot initialise the machine/);
  const skipped = r.failed.find((f) => f.name === "doomed-10")!;
  assert.match(skipped.error.message, /^Cannot fork doomed-10: not attempted: the fork stopped after 3 failures in a row \(the last: .*simulated/);
  assert.is(skipped.error.details.notAttempted, true);
  assert.equal(engine.store.names("vms").filter((n) => n.startsWith("doomed")), []);
  assert.equal(fs.readdirSync(engine.store.memDir).filter((f) => f.includes("doomed")), []);
  console.log(`  10 children of a broken QEMU: 3 tried, 7 not attempted, in ${Date.now() - t0} ms`);
}));

test("children fork with and without limits; the limits reach QEMU (cgroup, -drive throttling)", guarded(180_000, async () => {
  const free = await engine.fork({ template: "lt", names: ["f-1", "f-2", "f-3"], concurrency: 1 });
  assert.is(free.failed.length, 0, free.failed.map((f) => f.error.message).join("; "));
  // Memory and disk I/O caps (a cgroup, throttling) without a CPU cap, then all four: a CPU cap
  // also slows the fork itself (loading the checkpoint and the identity step are CPU work).
  const noCpu = cg.layout ? { memoryMiB: 512, iops: 400, bps: 1048576 } : { iops: 400, bps: 1048576 };
  const mem = await engine.fork({ template: "lt", names: ["m-1", "m-2", "m-3"], concurrency: 1, limits: noCpu });
  assert.is(mem.failed.length, 0, mem.failed.map((f) => f.error.message).join("; "));
  const limits = cg.layout ? { cpuPercent: 50, ...noCpu } : noCpu;
  const capped = await engine.fork({ template: "lt", names: ["l-1", "l-2", "l-3"], concurrency: 1, limits });
  assert.is(capped.failed.length, 0, capped.failed.map((f) => f.error.message).join("; "));
  for (const c of [...mem.children, ...capped.children]) tokens.push(c.token);
  const ms = (r: typeof free) => `running ${p50(r.children.map((c) => c.timings!.runningMs!))} ms, ready ${p50(r.children.map((c) => c.timings!.readyMs!))} ms`;
  console.log(`  fork p50 (3 each, one at a time): no limits ${ms(free)}; ${JSON.stringify(noCpu)} ${ms(mem)}; ${JSON.stringify(limits)} ${ms(capped)}`);
  const l1 = engine.vm("l-1");
  assert.equal(l1.limits, limits, "kept in the manifest (start and reset apply them again)");
  const cmdline = fs.readFileSync(`/proc/${l1.pid}/cmdline`, "utf8");
  assert.match(cmdline, /throttling\.iops-total=400,throttling\.bps-total=1048576/);
  assert.not.match(fs.readFileSync(`/proc/${engine.vm("f-1").pid}/cmdline`, "utf8"), /throttling/);
  assert.is(await ok("l-1", "cat /tmp/warm"), "warm");
}));

test("a CPU cap shows in the child's cgroup and holds while its guest spins", guarded(120_000, async () => {
  if (!cg.layout) {
    console.log(`  skipped: cgroups are not usable here: ${cg.reason}`);
    return;
  }
  const vm = engine.vm("l-1");
  const [cpuDir, memDir] = [cg.layout.bases.cpu!, cg.layout.bases.memory!].map((b) => path.join(b, vm.token));
  const read = (f: string) => fs.readFileSync(f, "utf8").trim();
  if (cg.layout.version === 2) {
    assert.is(read(path.join(cpuDir, "cpu.max")), "50000 100000");
    assert.is(read(path.join(memDir, "memory.max")), String(512 * 1048576));
  } else {
    assert.is(read(path.join(cpuDir, "cpu.cfs_quota_us")), "50000");
    assert.is(read(path.join(cpuDir, "cpu.cfs_period_us")), "100000");
    assert.is(read(path.join(memDir, "memory.limit_in_bytes")), String(512 * 1048576));
  }
  for (const d of [cpuDir, memDir]) assert.ok(read(path.join(d, "cgroup.procs")).split("\n").includes(String(vm.pid)), `QEMU ${vm.pid} in ${d}`);
  assert.not.ok(read(`/proc/${engine.vm("f-1").pid}/cgroup`).includes(engine.vm("f-1").token), "an unlimited child has no cgroup of its own");
  // Spin the guest's vCPU for 4 s: QEMU may use at most half a core.
  const spin = "end=$(( $(cut -d. -f1 /proc/uptime) + 4 )); while [ $(cut -d. -f1 /proc/uptime) -lt $end ]; do :; done";
  const c0 = cpuSeconds(vm.pid!);
  const t0 = Date.now();
  await ok("l-1", spin);
  const share = (cpuSeconds(vm.pid!) - c0) / ((Date.now() - t0) / 1000);
  const f1 = engine.vm("f-1");
  const u0 = cpuSeconds(f1.pid!);
  const u1 = Date.now();
  await ok("f-1", spin);
  const free = (cpuSeconds(f1.pid!) - u0) / ((Date.now() - u1) / 1000);
  console.log(`  a spinning guest: capped at 50 % its QEMU used ${(share * 100).toFixed(0)} % of a core, uncapped ${(free * 100).toFixed(0)} %`);
  assert.ok(share < 0.6, `capped child used ${share}`);
  // The limits are the VM's: a reset (a new QEMU, a new token) gets its own cgroup with them.
  const again = await engine.reset("l-1");
  tokens.push(again.token);
  assert.is.not(again.token, vm.token);
  assert.not.ok(fs.existsSync(cpuDir), "the old QEMU's cgroup went with it");
  const cpuFile = cg.layout.version === 2 ? "cpu.max" : "cpu.cfs_quota_us";
  assert.is(read(path.join(cg.layout.bases.cpu!, again.token, cpuFile)).split(" ")[0], "50000");
}));

test("a child past its memory cap is killed alone (it shows crashed); its siblings run on", guarded(120_000, async () => {
  if (!cg.layout) {
    console.log(`  skipped: cgroups are not usable here: ${cg.reason}`);
    return;
  }
  const r = await engine.fork({ template: "lt", names: ["mm-1"], limits: { memoryMiB: 80 } });
  assert.is(r.failed.length, 0, r.failed.map((f) => f.error.message).join("; "));
  tokens.push(r.children[0].token);
  const dir = path.join(cg.layout.bases.memory!, r.children[0].token);
  const used = Number(fs.readFileSync(path.join(dir, cg.layout.version === 2 ? "memory.current" : "memory.usage_in_bytes"), "utf8")) / 1048576;
  // 60 MB of guest pages the child writes itself: charged to it, past 80 MiB with QEMU's own.
  const fill = await sh("mm-1", "head -c 60000000 /dev/zero > /tmp/big; echo survived", 60_000).catch((err) => ({ code: -1, out: "", err: String(err) }));
  assert.is.not(fill.out, "survived");
  const vm = engine.vm("mm-1");
  assert.is(vm.status, "crashed");
  console.log(`  a child capped at 80 MiB (charged ${used.toFixed(0)} MiB after its fork) writing 60 MB of guest memory: ${vm.status}`);
  assert.is(await ok("f-1", "echo sibling"), "sibling");
  await engine.remove(["mm-1"]);
}));

test("disk I/O is throttled to the child's bps", guarded(120_000, async () => {
  const write = "t0=$(cut -d' ' -f1 /proc/uptime); dd if=/dev/zero of=/data/io bs=64k count=48 conv=fsync 2>/dev/null; t1=$(cut -d' ' -f1 /proc/uptime); rm -f /data/io; echo $t0 $t1";
  const secs = (out: string) => { const [a, b] = out.split(" ").map(Number); return b - a; };
  const limited = secs(await ok("l-2", write));
  const free = secs(await ok("f-2", write));
  console.log(`  3 MiB written with fsync: throttled to 1 MiB/s ${limited.toFixed(2)} s, unthrottled ${free.toFixed(2)} s`);
  assert.ok(limited >= 2, `throttled write took ${limited} s`);
}));

test("a guest printing without pause keeps its console log under the cap; the console still answers", guarded(120_000, async () => {
  const vm = engine.vm("f-3");
  const log = vmPaths(engine.store.dir("vms", vm.name)).consoleLog;
  const onDisk = () => [log, `${log}.1`].reduce((s, f) => s + (fs.existsSync(f) ? fs.statSync(f).size : 0), 0);
  let most = 0;
  const sampler = setInterval(() => { most = Math.max(most, onDisk()); }, 50);
  const t0 = Date.now();
  let out: string;
  try {
    out = await ok("f-3", "yes forkvm-flood | head -c 3000000 > /dev/ttyS0; echo done", 90_000);
  } finally {
    clearInterval(sampler);
  }
  most = Math.max(most, onDisk());
  const s = (Date.now() - t0) / 1000;
  console.log(`  3 MB printed to the serial console in ${s.toFixed(1)} s (${(3 / s).toFixed(2)} MB/s): console.log + .1 never above ${(most / 1024).toFixed(0)} KiB (cap ${CONSOLE_KIB} KiB per file)`);
  assert.is(out, "done");
  assert.ok(most <= 2 * CONSOLE_KIB * 1024, `console logs took ${most} bytes`);
  assert.ok(most >= CONSOLE_KIB * 1024, `a full file's worth is kept (${most} bytes)`);
  assert.match(tail(log, 3), /forkvm-flood/);
  assert.ok(isAlive(vm.pid, vm.token));
  // The interactive console (console.sock) is untouched by the cap.
  assert.match(await consoleEcho(vmPaths(engine.store.dir("vms", vm.name)).console), /console-ok-42/);
}));

test("a VM whose log capper died runs on: its console writes are dropped, QEMU ignores the broken pipe", guarded(60_000, async () => {
  const vm = engine.vm("f-3");
  const log = vmPaths(engine.store.dir("vms", vm.name)).consoleLog;
  const cappers = fs.readdirSync("/proc").filter((p) => /^\d+$/.test(p)).filter((p) => {
    try { const argv = fs.readFileSync(`/proc/${p}/cmdline`, "utf8").split("\0"); return argv.includes(log) || argv.includes(`of=${log}`); } catch { return false; }
  });
  assert.is(cappers.length, 2, "the console's capper runs (its shell and its dd)");
  for (const p of cappers) process.kill(Number(p), "SIGKILL");
  await ok("f-3", "echo after-the-capper > /dev/ttyS0; yes | head -c 200000 > /dev/ttyS0; echo fine");
  assert.ok(isAlive(vm.pid, vm.token), "QEMU survived");
  assert.is(await ok("f-3", "echo still"), "still");
}));

test("a child filling its delta disk gets ENOSPC inside; its disk (on tmpfs) stays within the disk's size; siblings are fine", guarded(240_000, async () => {
  const vm = engine.vm("f-2");
  const delta = vm.diskPath!;
  assert.ok(delta.startsWith(engine.store.memDir), "a non-persistent child's delta disk is on tmpfs");
  const t0 = Date.now();
  const r = await ok("f-2", "dd if=/dev/zero of=/data/fill bs=1M 2>&1; echo \"dd exit $?\"; sync", 200_000);
  assert.match(r, /No space left on device/);
  assert.match(r, /dd exit [1-9]/);
  const st = fs.statSync(delta);
  const bound = (64 + 2) * 1048576; // the virtual size plus qcow2 metadata (and slack)
  console.log(`  guest filled its 64 MiB disk in ${((Date.now() - t0) / 1000).toFixed(1)} s: delta disk ${(st.size / 1048576).toFixed(1)} MiB long, ${(st.blocks * 512 / 1048576).toFixed(1)} MiB on tmpfs`);
  assert.ok(st.size <= bound && st.blocks * 512 <= bound, `delta ${st.size} bytes, ${st.blocks * 512} allocated`);
  assert.ok(st.blocks * 512 > 32 * 1048576, "the guest really wrote into it");
  assert.is(await ok("f-2", "echo alive"), "alive");
  assert.is(await ok("f-1", "echo sibling > /data/s && sync && cat /data/s"), "sibling");
  await ok("f-2", "rm -f /data/fill && sync");
}));

test("removing limited children removes their cgroups", guarded(60_000, async () => {
  await engine.remove(["m-1", "m-2", "m-3", "l-1", "l-2", "l-3"]);
  if (!cg.layout) return;
  for (const t of tokens) for (const d of cgroupDirs(cg.layout, t)) assert.not.ok(fs.existsSync(d), `${d} removed`);
}));

test("admission on the real host: a small fork is admitted (the figures are the host's own)", () => {
  const t = engine.store.getTemplate("lt");
  const s = admitFork(engine.ctx, { template: t, count: 2, persistent: false, clone: "linked" });
  assert.is(s.maxVms, 1000);
});

test.run();
