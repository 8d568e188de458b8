// Assembling the default guest image (Debian's kernel plus a busybox initramfs carrying the
// forkvm init and agent) reproducibly into <cache>/images/default/: what it is made of, staging
// the initramfs, one build at a time, leftovers of killed builds, and replacing the directory.
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { gzipSync } from "node:zlib";
import * as lockfile from "proper-lockfile";
import { ForkvmError, messageOf } from "../errors";
import { Logger, silentLogger } from "../log";
import { fsyncDir, writeFileAtomic } from "../util/atomic-write";
import { sha256 } from "../util/hash";
import { cacheDir, GuestImage, ImageInputs, ImageManifest, imageDir, safeReadManifest, toGuestImage, upToDateImage } from "./catalogue";
import { cpioArchive, treeEntries } from "./cpio";
import { downloadKernel, extractKernelPackage, findBusybox, pruneDebs, resolveKernelPackage } from "./debian";
import { directBootKernel } from "./kernel";
import { kernelModuleClosure } from "./modules";

/**
 * Base kernel command line. Measured under TCG (`-M pc`, 1 vCPU, 256 MiB, PVH boot, no disk),
 * boot to agent-ready, mean of 5 interleaved runs: "console=ttyS0 panic=-1 quiet" 3.47 s; adding
 * `tsc=reliable no_timer_check` (no TSC watchdog, no timer IRQ check), `i8042.noaux` (no probe of
 * the absent PS/2 mouse) and `cryptomgr.notests` (no crypto self-tests) 2.87 s; `mitigations=off`
 * on top gained nothing measurable (3.03 s), so it is left out. `panic=-1` reboots at once on a
 * panic, so with QEMU's -no-reboot a broken guest ends its process instead of hanging.
 * Two sysctls keep idle guests asleep (hundreds of children idle on one host): no proactive memory
 * compaction (kcompactd woke twice a second) and vmstat folding every 10 s instead of every second.
 * An idle forked child used 3.3 ms of host CPU per second with them unset, 1.25 ms with them
 * (4 children, 10 s each): 200 idle children 0.66 -> 0.25 of a core.
 */
export const BASE_CMDLINE = "console=ttyS0 panic=-1 quiet tsc=reliable no_timer_check i8042.noaux cryptomgr.notests sysctl.vm.compaction_proactiveness=0 sysctl.vm.stat_interval=10";

/**
 * Smallest guest memory that reaches agent-ready, with a margin. Measured under TCG by booting
 * with -m 32..128 and a 1 GiB disk, then running the agent checks (exec with a 1 MiB output):
 * 32/48 MiB panic at once, 80 MiB panics out of memory during boot, 88 MiB reaches agent-ready but
 * the 1 MiB exec gets its reply writer OOM-killed, 96 MiB passes everything. 128 = 96 + a third.
 */
export const MIN_MEMORY_MIB = 128;

/** Kernel modules the guest needs; their dependencies come from the package's modules.dep. */
export const MODULE_ROOTS = ["virtio_pci", "virtio_console", "virtio_blk", "virtio_net", "ext4", "crc32c_generic"];

/** Bump when the layout of the initramfs or the manifest changes: it forces a rebuild. */
const BUILDER_REVISION = 2;
const GUEST_SCRIPTS = ["init.sh", "agent.sh", "udhcpc.sh"] as const;

export interface BuildOptions {
  cacheDir?: string;
  log?: Logger;
  /** Rebuild even when the inputs did not change. */
  force?: boolean;
  /** Called with a short description of each step as it starts. */
  onProgress?: (step: string) => void;
}

/**
 * Builds the default image (or returns the existing one at once when its inputs — kernel
 * package version, busybox version, guest scripts, builder revision — are unchanged).
 * Throws HOST when a host package or tool is missing (run scripts/setup.sh), IMAGE when a build
 * step fails (the message names the step; apt/dpkg stderr is in details.stderr), TIMEOUT when a
 * tool outlives its deadline (apt-get download: 10 minutes).
 */
export async function buildDefaultImage(opts: BuildOptions = {}): Promise<GuestImage> {
  const name = "default";
  const cache = opts.cacheDir ?? cacheDir();
  const log = (opts.log ?? silentLogger).child({ image: name });
  const dir = imageDir(cache, name);
  const progress = (step: string) => {
    log.log("debug", step);
    opts.onProgress?.(step);
  };

  progress("check host packages");
  const busybox = await findBusybox();
  const scriptsSha256 = hashScripts();

  progress("resolve kernel package");
  let kernel: { pkg: string; version: string } | undefined;
  try {
    kernel = await resolveKernelPackage();
  } catch (err) {
    // Offline or without apt lists: an existing image is still good enough.
    const existing = safeReadManifest(dir, name);
    if (existing && !opts.force) {
      log.log("warn", "cannot check the kernel package; using the image already built", { error: messageOf(err) });
      return toGuestImage(dir, existing);
    }
    throw err;
  }
  const inputs: ImageInputs = {
    builder: BUILDER_REVISION,
    kernelPackage: kernel.pkg,
    kernelPackageVersion: kernel.version,
    busyboxVersion: busybox.version,
    scriptsSha256,
    modules: MODULE_ROOTS,
    cmdline: BASE_CMDLINE,
    minMemoryMiB: MIN_MEMORY_MIB,
  };

  const upToDate = () => (opts.force ? Promise.resolve(undefined) : upToDateImage(dir, name, inputs));
  const ready = await upToDate();
  if (ready) {
    log.log("debug", "image is up to date", { sha256: ready.sha256 });
    return ready;
  }

  // One build at a time per cache; a build that waited may find the image already done.
  fs.mkdirSync(path.join(cache, "images"), { recursive: true });
  progress("wait for other builds");
  const release = await lockBuild(cache, name);
  try {
    const done = await upToDate();
    if (done) return done;
    removeLeftovers(cache, name, log);
    return await build(cache, name, inputs, busybox.path, progress, log);
  } finally {
    await release().catch(() => {});
  }
}

async function build(
  cache: string,
  name: string,
  inputs: ImageInputs,
  busyboxPath: string,
  progress: (step: string) => void,
  log: Logger,
): Promise<GuestImage> {
  const dir = imageDir(cache, name);
  const work = fs.mkdtempSync(path.join(cache, `build-${name}-`));
  try {
    progress(`download ${inputs.kernelPackage} ${inputs.kernelPackageVersion}`);
    const deb = await downloadKernel(path.join(cache, "debs"), inputs.kernelPackage, inputs.kernelPackageVersion);

    progress(`extract ${path.basename(deb)}`);
    const root = path.join(work, "kernel");
    const { kernelVersion, vmlinuz, modRoot } = await extractKernelPackage(deb, inputs.kernelPackage, root);

    progress("resolve kernel modules");
    const modules = await kernelModuleClosure({ root, kernelVersion, modRoot, roots: MODULE_ROOTS, busyboxPath });
    log.log("debug", "kernel modules", { modules });

    progress("assemble initramfs");
    const stage = path.join(work, "rootfs");
    stageRootfs(stage, { busyboxPath, kernelVersion, modRoot, modules });
    const entries = [...(await treeEntries(stage)), { path: "dev/console", type: "char" as const, mode: 0o600, major: 5, minor: 1 }];
    const initrd = gzipSync(cpioArchive(entries), { level: 9 });

    progress("decompress the kernel for direct boot");
    const kernelBytes = fs.readFileSync(vmlinuz);
    const elf = await directBootKernel(kernelBytes, log);

    progress("write image");
    const out = path.join(work, "image");
    fs.mkdirSync(out);
    writeFileAtomic(path.join(out, "vmlinuz"), kernelBytes);
    writeFileAtomic(path.join(out, "initrd.img"), initrd);
    const files: ImageManifest["files"] = { vmlinuz: sha256(kernelBytes), "initrd.img": sha256(initrd) };
    if (elf) {
      writeFileAtomic(path.join(out, "vmlinux"), elf);
      files.vmlinux = sha256(elf);
    }
    const kernel = elf ? "vmlinux" : "vmlinuz";
    const manifest: ImageManifest = {
      version: 1,
      name,
      kernel,
      initrd: "initrd.img",
      cmdline: inputs.cmdline,
      kernelVersion,
      minMemoryMiB: inputs.minMemoryMiB,
      sha256: sha256(`${kernel} ${files[kernel]}\ninitrd.img ${files["initrd.img"]}\n${inputs.cmdline}\n`),
      files,
      modules,
      inputs,
    };
    writeFileAtomic(path.join(out, "image.json"), JSON.stringify(ImageManifest.parse(manifest), null, 2) + "\n");
    replaceDir(out, dir);
    pruneDebs(path.join(cache, "debs"), deb);
    log.log("info", "built guest image", { sha256: manifest.sha256, kernelVersion, initrdBytes: initrd.length });
    return toGuestImage(dir, manifest);
  } catch (err) {
    if (err instanceof ForkvmError) throw err;
    throw new ForkvmError("IMAGE", `Cannot build image ${name}: ${messageOf(err)}`, { cause: err });
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

/** Work directories of builds that were killed (hundreds of MB each); called under the lock. */
function removeLeftovers(cache: string, name: string, log: Logger): void {
  const places: [string, RegExp][] = [
    [cache, new RegExp(`^build-${name}-`)],
    [path.join(cache, "images"), new RegExp(`^\\.${name}\\.old-`)],
  ];
  for (const [dir, re] of places) {
    for (const f of fs.readdirSync(dir)) {
      if (!re.test(f)) continue;
      log.log("debug", "removing what an interrupted build left", { path: path.join(dir, f) });
      fs.rmSync(path.join(dir, f), { recursive: true, force: true });
    }
  }
}

async function lockBuild(cache: string, name: string): Promise<() => Promise<void>> {
  const target = path.join(cache, "images", `.${name}.build`);
  try {
    return await lockfile.lock(target, {
      realpath: false,
      lockfilePath: `${target}.lock`,
      stale: 30_000,
      update: 5_000,
      retries: { retries: 600, minTimeout: 1000, maxTimeout: 1000, factor: 1 },
    });
  } catch (err) {
    throw new ForkvmError("IMAGE", `Cannot lock image ${name} for building: ${messageOf(err)}`, { cause: err });
  }
}

/** The rootfs of the initramfs, as a directory tree (metadata is normalised by treeEntries). */
function stageRootfs(stage: string, p: { busyboxPath: string; kernelVersion: string; modRoot: string; modules: string[] }): void {
  for (const d of ["bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "run", "data", "root", "mnt", "var", "etc/forkvm", "forkvm"]) {
    fs.mkdirSync(path.join(stage, d), { recursive: true });
  }
  const copy = (from: string, to: string, mode: number) => {
    fs.mkdirSync(path.dirname(path.join(stage, to)), { recursive: true });
    fs.copyFileSync(from, path.join(stage, to));
    fs.chmodSync(path.join(stage, to), mode);
  };
  copy(p.busyboxPath, "bin/busybox", 0o755);
  copy(guestScript("init.sh"), "init", 0o755);
  copy(guestScript("agent.sh"), "forkvm/agent.sh", 0o755);
  copy(guestScript("udhcpc.sh"), "forkvm/udhcpc.sh", 0o755);
  const loadList: string[] = [];
  for (const m of p.modules) {
    const rel = path.posix.join("lib/modules", p.kernelVersion, m);
    copy(path.join(p.modRoot, m), rel, 0o644);
    loadList.push(`/${rel}`);
  }
  const write = (rel: string, text: string) => fs.writeFileSync(path.join(stage, rel), text, { mode: 0o644 });
  write("etc/forkvm/modules", loadList.join("\n") + "\n");
  write("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n");
  write("etc/group", "root:x:0:\n");
  write("etc/profile", "export PATH=/sbin:/usr/sbin:/bin:/usr/bin HOME=/root\nPS1='\\h:\\w# '\n");
}

/**
 * A guest script from engine/guest/ in the source tree: found from engine/image/ when run with
 * ts-node, from dist/engine/image/ when compiled (dist/ does not copy the scripts).
 */
function guestScript(name: string): string {
  const candidates = [path.join(__dirname, "..", "guest", name), path.join(__dirname, "..", "..", "..", "engine", "guest", name)];
  const found = candidates.find((p) => fs.existsSync(p));
  if (!found) throw new ForkvmError("IMAGE", `Cannot find guest script ${name}: looked in ${candidates.join(", ")}`);
  return found;
}

/** One sha256 over the guest scripts, each as "<name>\0<content>\0". */
function hashScripts(): string {
  return sha256(Buffer.concat(GUEST_SCRIPTS.flatMap((s) => [Buffer.from(`${s}\0`), fs.readFileSync(guestScript(s)), Buffer.from("\0")])));
}

/** Puts the finished directory `from` at `to`, replacing what was there. */
function replaceDir(from: string, to: string): void {
  const old = `${path.dirname(to)}/.${path.basename(to)}.old-${randomBytes(4).toString("hex")}`;
  let moved = false;
  try {
    fs.renameSync(to, old);
    moved = true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
  }
  fs.renameSync(from, to);
  fsyncDir(path.dirname(to));
  if (moved) fs.rmSync(old, { recursive: true, force: true });
}
