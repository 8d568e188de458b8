// QEMU without root (-runas forkvm-qemu): the decision and the memory directory rule without QEMU,
// then on real QEMU (TCG, one 128 MiB parent) a parent, a running and a frozen capture, a fork of 2
// and a reset, each QEMU with a non-zero uid and its seccomp filter; 10 forks timed each way.
// Skipped (said so) unless run as root with the forkvm-qemu account (scripts/setup.sh makes it).
import { suite } from "uvu";
import * as assert from "uvu/assert";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { randomBytes } from "node:crypto";
import { Engine } from "../../engine/engine";
import { buildDefaultImage, loadImage } from "../../engine/image";
import { ForkvmError } from "../../engine/errors";
import { privateMemDir } from "../../engine/state/store";
import { parsePasswd, qemuUser, QEMU_USER } from "../../engine/qemu/run-as";
import { qemuArgv, SANDBOX, SANDBOX_RUNAS, type MachineShape } from "../../engine/qemu/argv";
import { deadline } from "../helpers/deadline";

const test = suite("qemu runs as forkvm-qemu");
const user = parsePasswd(fs.existsSync("/etc/passwd") ? fs.readFileSync("/etc/passwd", "utf8") : "", QEMU_USER);
const able = process.getuid?.() === 0 && user !== undefined;
// A scratch directory others may search (mkdtemp makes 0700: QEMU's user could not reach the home).
const scratch = fs.mkdtempSync(path.join(os.tmpdir(), "runas-"));
fs.chmodSync(scratch, 0o711);
const home = path.join(scratch, "home");
const memDir = `/dev/shm/forkvm-runas-${process.pid}-${randomBytes(3).toString("hex")}`;
const saved = process.env.FORKVM_QEMU_USER;
process.env.FORKVM_QEMU_USER = QEMU_USER; // forced: a host where it cannot work fails loudly instead of quietly running as root
const engine = new Engine({ home, memDir });

const sh = async (vm: string, cmd: string) => {
  const r = await engine.exec(vm, ["sh", "-c", cmd], { timeoutMs: 30_000 });
  assert.is(r.exitCode, 0, `${vm}: ${cmd}: ${r.stderr}`);
  return r.stdout.toString().trim();
};
/** The effective uid and seccomp mode of a VM's QEMU (from /proc/<pid>/status). */
const identity = (vm: string) => {
  const pid = engine.vm(vm).pid;
  assert.ok(pid, `${vm} has no pid`);
  const status = fs.readFileSync(`/proc/${pid}/status`, "utf8");
  const uid = Number(/^Uid:\s+\d+\s+(\d+)/m.exec(status)?.[1]);
  const gid = Number(/^Gid:\s+\d+\s+(\d+)/m.exec(status)?.[1]);
  return { uid, gid, seccomp: /^Seccomp:\s+(\d+)/m.exec(status)?.[1] };
};
const unprivileged = (vm: string) => {
  const id = identity(vm);
  assert.equal(id, { uid: user!.uid, gid: user!.gid, seccomp: "2" }, `${vm}'s QEMU`);
};
const p50 = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

// ---------------------------------------------------------------------------------------------
// Without QEMU

test("passwd parsing: uid and primary gid of a name, nothing for another", () => {
  const text = "root:x:0:0:root:/root:/bin/bash\nforkvm-qemu:x:999:995::/home/forkvm-qemu:/usr/sbin/nologin\n";
  assert.equal(parsePasswd(text, "forkvm-qemu"), { name: "forkvm-qemu", uid: 999, gid: 995 });
  assert.is(parsePasswd(text, "forkvm"), undefined);
  assert.is(parsePasswd("forkvm-qemu:x:abc:1::/:/bin/sh", "forkvm-qemu"), undefined);
});

test("argv: -runas with the sandbox minus elevateprivileges and the incoming socket bound at startup; without it, unchanged", () => {
  const shape: MachineShape = { accel: "tcg", machine: "pc-i440fx-7.2", memoryMiB: 128, vcpus: 1, kernel: "/k", initrd: "/i", cmdline: "", disk: false, nic: false };
  const base = { token: "a", dir: "/s/c", memory: { path: "/m/t", share: false }, incoming: true };
  const after = (argv: string[], flag: string) => argv[argv.indexOf(flag) + 1];
  const as = qemuArgv(shape, { ...base, runAs: { name: "forkvm-qemu" } });
  assert.is(after(as, "-runas"), "forkvm-qemu");
  assert.is(after(as, "-sandbox"), SANDBOX_RUNAS);
  assert.not.match(SANDBOX_RUNAS, "elevateprivileges");
  assert.is(SANDBOX_RUNAS, SANDBOX.replace(",elevateprivileges=deny", ""), "only that one flag goes");
  assert.is(after(as, "-incoming"), "unix:/s/c/migrate.sock");
  const root = qemuArgv(shape, base);
  assert.not.ok(root.includes("-runas"));
  assert.is(after(root, "-sandbox"), SANDBOX);
  assert.is(after(root, "-incoming"), "defer");
});

test("FORKVM_QEMU_USER=root keeps QEMU as forkvm; a forced user that cannot reach the home is refused; by default it is quietly not used", () => {
  assert.is(qemuUser(home, memDir, { FORKVM_QEMU_USER: "root" }), undefined);
  if (!able) return;
  const closed = fs.mkdtempSync(path.join(os.tmpdir(), "runas-closed-")); // 0700: QEMU's user cannot search it
  try {
    const h = path.join(closed, "home");
    assert.is(qemuUser(h, memDir, {}), undefined);
    try {
      qemuUser(h, memDir, { FORKVM_QEMU_USER: QEMU_USER });
      assert.unreachable("a forced user that cannot search the home");
    } catch (err) {
      assert.instance(err, ForkvmError);
      assert.is((err as ForkvmError).code, "HOST");
      assert.match((err as ForkvmError).message, `cannot search ${closed}`);
    }
    assert.equal(qemuUser(home, memDir, {}), user);
    try {
      qemuUser(home, memDir, { FORKVM_QEMU_USER: "forkvm-no-such-user" });
      assert.unreachable("a user that does not exist");
    } catch (err) {
      assert.match((err as Error).message, "no such user");
    }
  } finally {
    fs.rmSync(closed, { recursive: true, force: true });
  }
});

test("the memory directory takes exactly 0710 or 0750 with QEMU's group, nothing wider and no other group", () => {
  if (!able) return;
  const d = `/dev/shm/forkvm-runas-rule-${process.pid}`;
  const gid = user!.gid;
  try {
    privateMemDir(d, gid);
    const st = fs.statSync(d);
    assert.equal([st.mode & 0o7777, st.gid], [0o710, gid], "a new directory becomes 0710 with QEMU's group");
    fs.chmodSync(d, 0o750);
    privateMemDir(d, gid);
    for (const mode of [0o770, 0o711, 0o730, 0o751]) {
      fs.chmodSync(d, mode);
      assert.throws(() => privateMemDir(d, gid), /Cannot use memory directory .*: its mode is/, `mode ${mode.toString(8)}`);
    }
    fs.chmodSync(d, 0o710);
    privateMemDir(d); // gc's check, and FORKVM_QEMU_USER=root after a run as forkvm-qemu: the account's group passes
    fs.chownSync(d, 0, 0);
    assert.throws(() => privateMemDir(d), /its mode is 0710/, "a group other than QEMU's");
    assert.throws(() => privateMemDir(d, gid), /its mode is 0710/, "the group must be QEMU's");
  } finally {
    fs.rmSync(d, { recursive: true, force: true });
  }
});

// ---------------------------------------------------------------------------------------------
// On QEMU

test.before(deadline(600_000, async () => {
  if (!able) {
    console.log(`  skipped on QEMU: needs root and the ${QEMU_USER} account (scripts/setup.sh)`);
    return;
  }
  await buildDefaultImage({});
  const image = await loadImage();
  const p = await engine.createParent({ name: "p", kernel: image.kernel, initrd: image.initrd, cmdline: image.cmdline, diskMiB: 64, memoryMiB: 128, accel: "tcg" });
  assert.is(p.status, "running");
}));

test.after(async () => {
  if (saved === undefined) delete process.env.FORKVM_QEMU_USER;
  else process.env.FORKVM_QEMU_USER = saved;
  if (able) {
    const names = [...engine.listTemplates().map((t) => t.name), ...engine.listVms().map((v) => v.name)];
    await engine.remove(names, { force: true }).catch((e) => console.error("cleanup:", e));
  }
  fs.rmSync(scratch, { recursive: true, force: true });
  fs.rmSync(memDir, { recursive: true, force: true });
});

test("a parent runs as forkvm-qemu under seccomp; the home and memory directory grant its group search only", deadline(60_000, async () => {
  if (!able) return;
  unprivileged("p");
  await sh("p", "echo precious > /data/keep && sync");
  for (const d of [home, path.join(home, "vms"), path.join(home, "vms", "p"), memDir]) {
    const st = fs.statSync(d);
    assert.equal([st.mode & 0o7777, st.gid], [0o710, user!.gid], d);
  }
  assert.is(fs.statSync(path.join(home, "pools")).mode & 0o077, 0, "pools/ is not QEMU's");
}));

test("a frozen capture that fails after its checkpoint resumes the parent, which writes its disk again (QEMU reopened it unprivileged)", deadline(60_000, async () => {
  if (!able) return;
  process.env.FORKVM_TEST_FAULT = "frozen-saved";
  try {
    await engine.createTemplate({ name: "t-fail", parent: "p", source: "frozen", quiesceTimeoutMs: 0 });
    assert.unreachable("the fault should fail the capture");
  } catch (err) {
    assert.match((err as Error).message, "frozen-saved");
  } finally {
    delete process.env.FORKVM_TEST_FAULT;
  }
  assert.is(engine.vm("p").status, "running");
  unprivileged("p");
  assert.is(await sh("p", "echo resumed > /data/resumed && sync && cat /data/resumed /data/keep"), "resumed\nprecious");
}));

test("a running capture: the parent goes on unprivileged on its new overlay, and a child of it runs", deadline(120_000, async () => {
  if (!able) return;
  // The builder QEMU lives for a second or two: sample its identity while the capture runs (the
  // last sample of each pid counts: the first ones may be taken before QEMU dropped root).
  const builder = new Map<string, string>();
  const watch = setInterval(() => {
    for (const pid of fs.readdirSync("/proc").filter((x) => /^\d+$/.test(x))) {
      try {
        const argv = fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
        if (!argv[0]!.includes("qemu-system") || !argv.some((a) => a.includes(path.join(home, "templates", "t-live", "builder")))) continue;
        const st = fs.readFileSync(`/proc/${pid}/status`, "utf8");
        builder.set(pid, `uid ${/^Uid:\s+\d+\s+(\d+)/m.exec(st)?.[1]} seccomp ${/^Seccomp:\s+(\d+)/m.exec(st)?.[1]}`);
      } catch { /* gone */ }
    }
  }, 20);
  const t = await engine.createTemplate({ name: "t-live", parent: "p", source: "running" }).finally(() => clearInterval(watch));
  assert.equal([...builder.values()], [`uid ${user!.uid} seccomp 2`], "the builder's QEMU");
  assert.is(engine.vm("p").status, "running");
  unprivileged("p");
  await sh("p", "echo after > /data/after && sync"); // written through the overlay QEMU opened as forkvm-qemu
  const r = await engine.fork({ template: t.name, names: ["live-1"] });
  assert.is(r.failed.length, 0, r.failed.map((f) => f.error.message).join("; "));
  unprivileged("live-1");
  assert.is(await sh("live-1", "cat /data/keep"), "precious");
  await engine.remove(["live-1"], { force: true });
}));

test("a frozen capture, a fork of 2 (writable delta disks in the memory directory) and a reset, all unprivileged", deadline(180_000, async () => {
  if (!able) return;
  const t = await engine.createTemplate({ name: "t", parent: "p", source: "frozen" });
  const r = await engine.fork({ template: t.name, count: 2, prefix: "c", concurrency: 2 });
  assert.is(r.failed.length, 0, r.failed.map((f) => f.error.message).join("; "));
  for (const c of ["c-1", "c-2"]) {
    unprivileged(c);
    assert.is(await sh(c, "cat /data/keep"), "precious");
    await sh(c, `echo ${c} > /data/mine && sync`);
    const disk = fs.statSync(engine.vm(c).diskPath!);
    assert.equal([disk.mode & 0o7777, disk.gid], [0o660, user!.gid], `${c}'s delta disk`);
  }
  // What QEMU's user could read: the children's disks (its group), and files that hold nothing
  // private (kernel and initrd copies, the empty overlay, sockets it cannot connect to without
  // write, QEMU's and the console's logs: see engine/README.md). No template file at all.
  const walk = (d: string): string[] => fs.readdirSync(d, { withFileTypes: true }).flatMap((e) => e.isDirectory() ? walk(path.join(d, e.name)) : [path.join(d, e.name)]);
  const exposed = [...walk(home), ...walk(memDir)].filter((f) => {
    const st = fs.lstatSync(f);
    if (!(st.mode & 0o066)) return false;
    if (st.gid === user!.gid && (st.mode & 0o7777) === 0o660 && /\/vms-c-\d\.qcow2$/.test(f)) return false;
    return !/\/(kernel|initrd|overlay\.qcow2|qemu\.log|console\.log|qmp\.sock|console\.sock|net\.sock)$/.test(f) || !!(st.mode & 0o022);
  });
  assert.equal(exposed, [], "files others or QEMU's group may read or write");
  for (const f of [t.memoryPath, t.statePath, t.diskPath!, t.memoryImage!.path]) assert.is(fs.statSync(f).mode & 0o7777, 0o400, f);
  const before = engine.vm("c-1").pid;
  await engine.reset("c-1");
  assert.is.not(engine.vm("c-1").pid, before);
  unprivileged("c-1");
  assert.is(await sh("c-1", "cat /data/mine 2>/dev/null || echo gone"), "gone");
  await engine.remove(["c-1", "c-2"], { force: true });
}));

test("fork latency: 10 children as forkvm-qemu and 10 as root", deadline(240_000, async () => {
  if (!able) return;
  const round = async (who: string, prefix: string) => {
    process.env.FORKVM_QEMU_USER = who;
    const r = await engine.fork({ template: "t", count: 10, prefix, concurrency: 1 });
    assert.is(r.failed.length, 0, r.failed.map((f) => f.error.message).join("; "));
    const uid = identity(`${prefix}-1`).uid;
    assert.is(uid === 0, who === "root", `${who}: uid ${uid}`);
    const ready = r.children.map((c) => c.timings?.readyMs ?? NaN);
    await engine.remove(r.children.map((c) => c.name), { force: true });
    return ready;
  };
  const asUser = await round(QEMU_USER, "u");
  const asRoot = await round("root", "r");
  console.log(`  10 forks to agent-ready, p50 (min–max): ${QEMU_USER} ${p50(asUser)} ms (${Math.min(...asUser)}–${Math.max(...asUser)}), root ${p50(asRoot)} ms (${Math.min(...asRoot)}–${Math.max(...asRoot)})`);
  process.env.FORKVM_QEMU_USER = QEMU_USER;
}));

test.run();
