import { test } from "uvu";
import * as assert from "uvu/assert";
import { qemuArgv, type MachineShape } from "../../engine/qemu/argv";

const shape: MachineShape = { accel: "tcg", machine: "pc-i440fx-7.2", memoryMiB: 256, vcpus: 1, kernel: "/k", initrd: "/i", cmdline: "console=ttyS0", disk: true, nic: true };
const devices = (argv: string[]) => argv.filter((_, i) => argv[i - 1] === "-device");

test("a parent and a child get the same devices in the same order", () => {
  const parent = qemuArgv(shape, { token: "a", dir: "/s/p", memory: { path: "/m/p", share: true }, diskPath: "/s/p/d", mac: "52:54:00:00:00:01", forwards: [{ host: 8080, guest: 80, proto: "tcp" }] });
  const child = qemuArgv(shape, { token: "b", dir: "/s/c", memory: { path: "/m/t", share: false }, diskPath: "/s/c/d", mac: "52:54:00:00:00:02", incoming: true });
  assert.equal(devices(parent).map((d) => d.split(",")[0]), devices(child).map((d) => d.split(",")[0]));
  assert.ok(parent.includes("-S") === false && child.includes("-incoming"));
});

test("a child maps the template memory privately and a parent shares its own", () => {
  const parent = qemuArgv(shape, { token: "a", dir: "/s/p", memory: { path: "/m/p", share: true }, diskPath: "/d" });
  const child = qemuArgv(shape, { token: "b", dir: "/s/c", memory: { path: "/m/t", share: false }, diskPath: "/d", incoming: true });
  assert.ok(parent.some((a) => a.includes("mem-path=/m/p,share=on")));
  assert.ok(child.some((a) => a.includes("mem-path=/m/t,share=off")));
});

test("commas in paths are escaped for QEMU", () => {
  const argv = qemuArgv(shape, { token: "a", dir: "/s/p", memory: { path: "/m/a,b", share: true }, diskPath: "/d,x" });
  assert.ok(argv.some((a) => a.includes("mem-path=/m/a,,b")));
  assert.ok(argv.some((a) => a.includes("file=/d,,x")));
});

test("port forwards bind to loopback only", () => {
  const argv = qemuArgv(shape, { token: "a", dir: "/s", memory: { path: "/m", share: true }, diskPath: "/d", forwards: [{ host: 2222, guest: 22, proto: "tcp" }] });
  assert.ok(argv.some((a) => a.includes("hostfwd=tcp:127.0.0.1:2222-:22")));
});

test("kernel arguments are appended on boot and dropped on incoming forks", () => {
  const boot = qemuArgv(shape, { token: "a", dir: "/s", memory: { path: "/m", share: true }, diskPath: "/d", kernelArgs: ["forkvm.hostname=x"] });
  const fork = qemuArgv(shape, { token: "a", dir: "/s", memory: { path: "/m", share: false }, diskPath: "/d", kernelArgs: ["forkvm.hostname=x"], incoming: true });
  assert.is(boot[boot.indexOf("-append") + 1], "console=ttyS0 forkvm.hostname=x");
  assert.is(fork[fork.indexOf("-append") + 1], "console=ttyS0");
});

test("a machine without disk or NIC has neither device", () => {
  const argv = qemuArgv({ ...shape, disk: false, nic: false }, { token: "a", dir: "/s", memory: { path: "/m", share: true } });
  assert.not.ok(argv.some((a) => a.startsWith("virtio-blk") || a.startsWith("virtio-net")));
});

test("a TCG translation buffer size goes on -accel; KVM ignores it", () => {
  const tcg = qemuArgv(shape, { token: "a", dir: "/s", memory: { path: "/m", share: false }, diskPath: "/d", incoming: true, tbSizeMiB: 32 });
  assert.is(tcg[tcg.indexOf("-accel") + 1], "tcg,tb-size=32");
  const kvm = qemuArgv({ ...shape, accel: "kvm" }, { token: "a", dir: "/s", memory: { path: "/m", share: false }, diskPath: "/d", incoming: true, tbSizeMiB: 32 });
  assert.is(kvm[kvm.indexOf("-accel") + 1], "kvm");
});

test.run();
