// The pure parts of the image builder: module closure from modules.dep, the newc cpio writer
// (byte-identical across builds), kernel package resolution, cache dir and loadImage errors;
// then, when the default image is built and QEMU is installed, one real boot under TCG.
import { spawn, spawnSync } from "node:child_process";
import { test } from "uvu";
import * as assert from "uvu/assert";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { bzImagePayload, cacheDir, cpioArchive, hasPvhEntry, loadImage, moduleClosure, moduleName, parseKernelDepends, treeEntries } from "../engine/image";
import { ForkvmError } from "../engine/errors";
import { AgentClient, createAgentFifos } from "../engine/guest/client";
import { deadline } from "./helpers/deadline";

// As busybox depmod writes it for Debian's 6.1 kernel (a few lines of it, reordered).
const SAMPLE_DEP = `
kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko kernel/fs/mbcache.ko kernel/lib/crc16.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/net/core/failover.ko:
kernel/fs/jbd2/jbd2.ko:
kernel/fs/mbcache.ko:
kernel/lib/crc16.ko:
kernel/crypto/crc32c_generic.ko:
kernel/arch/x86/crypto/crc32c-intel.ko:
kernel/sound/unrelated.ko: kernel/lib/crc16.ko
`;

test("module closure lists every dependency before the modules that need it", deadline(2000, async () => {
  const order = moduleClosure(SAMPLE_DEP, ["virtio_pci", "virtio_net", "ext4"]);
  const pos = (name: string) => order.findIndex((p) => moduleName(p) === name);
  assert.is(order.length, 12);
  for (const [dep, user] of [
    ["virtio_ring", "virtio"], ["virtio", "virtio_pci"], ["virtio_pci_modern_dev", "virtio_pci"], ["virtio_pci_legacy_dev", "virtio_pci"],
    ["virtio", "virtio_net"], ["failover", "net_failover"], ["net_failover", "virtio_net"], ["jbd2", "ext4"], ["mbcache", "ext4"], ["crc16", "ext4"],
  ]) {
    assert.ok(pos(dep!) >= 0 && pos(dep!) < pos(user!), `${dep} before ${user}`);
  }
  assert.is(new Set(order).size, order.length, "no module twice");
  assert.not.ok(order.some((p) => p.includes("unrelated")), "nothing outside the closure");
}));

test("module closure follows the order of the roots otherwise", deadline(2000, async () => {
  assert.equal(moduleClosure(SAMPLE_DEP, ["crc16", "crc32c_generic"]), ["kernel/lib/crc16.ko", "kernel/crypto/crc32c_generic.ko"]);
  // Dashes and underscores name the same module.
  assert.equal(moduleClosure(SAMPLE_DEP, ["crc32c_intel"]), ["kernel/arch/x86/crypto/crc32c-intel.ko"]);
}));

test("module closure throws IMAGE for an unknown root or a cycle", deadline(2000, async () => {
  const unknown = (() => { try { moduleClosure(SAMPLE_DEP, ["nosuch"]); } catch (e) { return e; } })() as ForkvmError;
  assert.instance(unknown, ForkvmError);
  assert.is(unknown.code, "IMAGE");
  assert.match(unknown.message, /nosuch is not in modules\.dep/);
  const cyc = (() => { try { moduleClosure("a.ko: b.ko\nb.ko: a.ko\n", ["a"]); } catch (e) { return e; } })() as ForkvmError;
  assert.is(cyc.code, "IMAGE");
  assert.match(cyc.message, /cycle/);
}));

test("module names drop the directory and the .ko suffix", deadline(2000, async () => {
  assert.is(moduleName("kernel/arch/x86/crypto/crc32c-intel.ko"), "crc32c_intel");
  assert.is(moduleName("kernel/fs/ext4/ext4.ko.xz"), "ext4");
}));

function makeTree(root: string, order: "ab" | "ba"): void {
  const files: [string, string, number][] = [["bin/tool", "#!/bin/sh\necho hi\n", 0o700], ["etc/conf", "x=1\n", 0o600], ["init", "#!/bin/sh\n", 0o755]];
  for (const [rel, text, mode] of order === "ab" ? files : [...files].reverse()) {
    fs.mkdirSync(path.dirname(path.join(root, rel)), { recursive: true });
    fs.writeFileSync(path.join(root, rel), text, { mode });
  }
  fs.symlinkSync("tool", path.join(root, "bin/sh"));
}

test("the cpio archive is byte-identical for the same tree built at different times", deadline(5000, async () => {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), "cpio-"));
  makeTree(path.join(base, "one"), "ab");
  await new Promise((r) => setTimeout(r, 20));
  makeTree(path.join(base, "two"), "ba");
  fs.utimesSync(path.join(base, "two/etc/conf"), 12345, 67890);
  const console = { path: "dev/console", type: "char" as const, mode: 0o600, major: 5, minor: 1 };
  const a = cpioArchive([...(await treeEntries(path.join(base, "one"))), console]);
  const b = cpioArchive([console, ...(await treeEntries(path.join(base, "two"))).reverse()]);
  assert.ok(a.equals(b));
  fs.rmSync(base, { recursive: true, force: true });
}));

test("the cpio archive is valid newc: headers, padding, modes and trailer", deadline(5000, async () => {
  const archive = cpioArchive([
    { path: "dir", type: "dir" },
    { path: "dir/file", type: "file", mode: 0o755, data: Buffer.from("hello") },
    { path: "link", type: "symlink", target: "dir/file" },
    { path: "dev/console", type: "char", major: 5, minor: 1 },
  ]);
  const entries: { name: string; mode: number; mtime: number; data: string; rdev: [number, number] }[] = [];
  let off = 0;
  for (;;) {
    assert.is(off % 4, 0, "entries are 4-byte aligned");
    const h = archive.subarray(off, off + 110).toString("ascii");
    assert.is(h.slice(0, 6), "070701");
    const field = (i: number) => parseInt(h.slice(6 + i * 8, 14 + i * 8), 16);
    const nameSize = field(11);
    const size = field(6);
    const name = archive.subarray(off + 110, off + 110 + nameSize - 1).toString();
    const dataOff = off + Math.ceil((110 + nameSize) / 4) * 4;
    entries.push({ name, mode: field(1), mtime: field(5), data: archive.subarray(dataOff, dataOff + size).toString(), rdev: [field(9), field(10)] });
    off = dataOff + Math.ceil(size / 4) * 4;
    if (name === "TRAILER!!!") break;
  }
  assert.is(off, archive.length);
  assert.equal(entries.map((e) => e.name), ["dev/console", "dir", "dir/file", "link", "TRAILER!!!"]);
  const by = Object.fromEntries(entries.map((e) => [e.name, e]));
  assert.is(by["dir"]!.mode, 0o040755);
  assert.is(by["dir/file"]!.mode, 0o100755);
  assert.is(by["dir/file"]!.data, "hello");
  assert.is(by["link"]!.mode, 0o120777);
  assert.is(by["link"]!.data, "dir/file");
  assert.is(by["dev/console"]!.mode, 0o020600);
  assert.equal(by["dev/console"]!.rdev, [5, 1]);
  assert.ok(entries.every((e) => e.mtime === 0));
}));

test("the cpio archive refuses duplicate paths", deadline(2000, async () => {
  const err = (() => { try { cpioArchive([{ path: "a", type: "dir" }, { path: "/a/", type: "dir" }]); } catch (e) { return e; } })() as ForkvmError;
  assert.is(err.code, "IMAGE");
  assert.match(err.message, /a appears twice/);
}));

test("the kernel package is read from the meta package's Depends", deadline(2000, async () => {
  assert.equal(parseKernelDepends("Package: linux-image-amd64\nVersion: 6.1.192-2\nDepends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)\n"), { pkg: "linux-image-6.1.0-56-amd64", version: "6.1.192-2" });
  assert.equal(parseKernelDepends("linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n"), { pkg: "linux-image-6.1.0-56-amd64" });
  assert.is(parseKernelDepends("Depends: firmware-foo\n"), undefined);
}));

/** A minimal ELF64 with one PT_NOTE segment holding one note. */
function elfWithNote(owner: string, type: number): Buffer {
  const name = Buffer.alloc(Math.ceil((owner.length + 1) / 4) * 4);
  name.write(owner);
  const note = Buffer.concat([Buffer.alloc(12), name, Buffer.alloc(4)]);
  note.writeUInt32LE(owner.length + 1, 0);
  note.writeUInt32LE(4, 4);
  note.writeUInt32LE(type, 8);
  const elf = Buffer.alloc(64 + 56);
  elf.writeUInt32BE(0x7f454c46, 0);
  elf[4] = 2; // ELFCLASS64
  elf[5] = 1; // little endian
  elf.writeBigUInt64LE(64n, 0x20); // e_phoff
  elf.writeUInt16LE(56, 0x36); // e_phentsize
  elf.writeUInt16LE(1, 0x38); // e_phnum
  elf.writeUInt32LE(4, 64); // PT_NOTE
  elf.writeBigUInt64LE(BigInt(elf.length), 64 + 8); // p_offset
  elf.writeBigUInt64LE(BigInt(note.length), 64 + 0x20); // p_filesz
  return Buffer.concat([elf, note]);
}

test("a kernel boots directly only when its ELF has the Xen PVH entry note", deadline(2000, async () => {
  assert.ok(hasPvhEntry(elfWithNote("Xen", 18)));
  assert.not.ok(hasPvhEntry(elfWithNote("Xen", 5)));
  assert.not.ok(hasPvhEntry(elfWithNote("GNU", 18)));
  assert.not.ok(hasPvhEntry(Buffer.from("not an elf at all, just text, long enough to have a header.......")));
}));

test("the bzImage payload is found from the setup header", deadline(2000, async () => {
  const bz = Buffer.alloc(4096);
  bz[0x1f1] = 3; // setup sectors: protected-mode code starts at (3 + 1) * 512
  bz.write("HdrS", 0x202, "latin1");
  bz.writeUInt16LE(0x20f, 0x206);
  bz.writeUInt32LE(100, 0x248); // payload_offset
  bz.writeUInt32LE(6, 0x24c); // payload_length
  bz.write("PAYLDX", 4 * 512 + 100, "latin1");
  assert.is(bzImagePayload(bz)?.toString("latin1"), "PAYLDX");
  bz.writeUInt32LE(5000, 0x24c);
  assert.is(bzImagePayload(bz), undefined, "a payload past the end");
  assert.is(bzImagePayload(Buffer.alloc(4096)), undefined, "no HdrS magic");
}));

test("the cache dir honours FORKVM_CACHE, then XDG_CACHE_HOME, then ~/.cache", deadline(2000, async () => {
  assert.is(cacheDir({ FORKVM_CACHE: "/c", XDG_CACHE_HOME: "/x", HOME: "/h" }), "/c");
  assert.is(cacheDir({ XDG_CACHE_HOME: "/x", HOME: "/h" }), "/x/forkvm");
  assert.is(cacheDir({ HOME: "/h" }), "/h/.cache/forkvm");
}));

test("loading an image never built fails with NOT_FOUND and says how to build it", deadline(2000, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "imgcache-"));
  const err = await loadImage("default", { cacheDir: dir }).catch((e) => e);
  assert.is(err.code, "NOT_FOUND");
  assert.is(err.message, "Cannot load image default: not built; run `forkvm image build`");
  fs.mkdirSync(path.join(dir, "images/default"), { recursive: true });
  fs.writeFileSync(path.join(dir, "images/default/image.json"), JSON.stringify({ version: 2 }));
  const bad = await loadImage("default", { cacheDir: dir }).catch((e) => e);
  assert.is(bad.code, "STATE");
  fs.rmSync(dir, { recursive: true, force: true });
}));

function builtImage(): Promise<Awaited<ReturnType<typeof loadImage>> | undefined> {
  return loadImage().catch(() => undefined);
}

test("the default image boots under TCG: agent, hostname, stdin, /data, identity, a second client", deadline(60_000, async () => {
  const img = await builtImage();
  const qemu = spawnSync("qemu-system-x86_64", ["--version"]).status === 0;
  if (!img || !qemu) {
    console.log(`  (skipped the real boot: ${!img ? "the default image is not built (scripts/setup.sh)" : "QEMU is not installed"})`);
    return;
  }
  const memDir = process.env.FORKVM_MEMDIR ?? os.tmpdir();
  fs.mkdirSync(memDir, { recursive: true });
  const dir = fs.mkdtempSync(path.join(process.env.FORKVM_TEST_HOME ?? os.tmpdir(), "boot-"));
  const mem = path.join(memDir, `image-test-${process.pid}.mem`);
  await createAgentFifos(path.join(dir, "agent"));
  fs.writeFileSync(path.join(dir, "disk.raw"), "");
  fs.truncateSync(path.join(dir, "disk.raw"), 64 * 1024 * 1024);
  const q = spawn("qemu-system-x86_64", [
    "-accel", "tcg", "-machine", "pc,memory-backend=mem", "-object", `memory-backend-file,id=mem,size=${img.minMemoryMiB}M,mem-path=${mem},share=on`,
    "-m", String(img.minMemoryMiB), "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
    "-kernel", img.kernel, "-initrd", img.initrd, "-append", `${img.cmdline} forkvm.hostname=t1 forkvm.mkfs=1`,
    "-chardev", `file,id=con,path=${dir}/console.log`, "-serial", "chardev:con",
    "-device", "virtio-serial-pci,id=vser0", "-chardev", `pipe,id=agent,path=${dir}/agent`,
    "-device", "virtserialport,bus=vser0.0,chardev=agent,name=org.forkvm.agent",
    "-drive", `file=${dir}/disk.raw,if=none,id=disk0,format=raw`, "-device", "virtio-blk-pci,drive=disk0",
    "-netdev", "user,id=net0", "-device", "virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56", "-device", "vmgenid,guid=auto",
  ], { stdio: "ignore" });
  let alive = true;
  q.on("exit", () => (alive = false));
  const c = new AgentClient(path.join(dir, "agent"), { lockFile: path.join(dir, "agent.lock") });
  try {
    await c.waitReady(45_000, () => alive);
    assert.is((await c.exec(["cat", "/etc/hostname"])).stdout.toString(), "t1\n");
    assert.is((await c.exec(["cat"], { stdin: "via stdin\n" })).stdout.toString(), "via stdin\n");
    assert.is((await c.exec(["sh", "-c", "grep -c ' /data ' /proc/mounts"])).stdout.toString(), "1\n");
    assert.is((await c.exec(["nosuchcommand"])).exitCode, 127);
    await c.identity({ hostname: "child-2", mac: "52:54:00:ab:cd:ef" }, 20_000);
    const after = await c.exec(["sh", "-c", "hostname; cat /sys/class/net/eth0/address; cat /etc/machine-id"]);
    const [host, mac, mid] = after.stdout.toString().trim().split("\n");
    assert.is(host, "child-2");
    assert.is(mac, "52:54:00:ab:cd:ef");
    assert.match(mid!, /^[0-9a-f]{32}$/);
    c.close();
    const again = new AgentClient(path.join(dir, "agent"), { lockFile: path.join(dir, "agent.lock") });
    assert.is(await again.ping(10_000), "1");
    again.close();
  } catch (err) {
    const consoleLog = fs.existsSync(path.join(dir, "console.log")) ? fs.readFileSync(path.join(dir, "console.log"), "utf8").slice(-800) : "";
    throw new Error(`${(err as Error).message}\nconsole:\n${consoleLog}`);
  } finally {
    c.close();
    q.kill("SIGKILL");
    if (alive) await new Promise((r) => q.on("exit", r));
    fs.rmSync(mem, { force: true });
    fs.rmSync(dir, { recursive: true, force: true });
  }
}));

test.run();
