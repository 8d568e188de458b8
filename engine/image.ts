// The default guest image: Debian's kernel plus a busybox initramfs carrying the forkvm init and
// agent, built reproducibly into <cache>/images/default/{vmlinuz,initrd.img,image.json}.
// Also the pure parts of the build (modules.dep closure, newc cpio) that the tests use alone.
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { gunzipSync, gzipSync } from "node:zlib";
import * as lockfile from "proper-lockfile";
import { z } from "zod";
import { ForkvmError, messageOf } from "./errors";
import { Logger, silentLogger } from "./log";
import { fsyncDir, writeFileAtomic } from "./util/atomic-write";
import { sha256, sha256File } from "./util/hash";
import { run, runBytes } from "./util/run";

export interface GuestImage {
  name: string;
  /** Directory holding the image files. */
  dir: string;
  /** Absolute path of the kernel: vmlinux (ELF, booted directly through its PVH entry) or vmlinuz. */
  kernel: string;
  /** Absolute path of the initramfs (gzip'd newc cpio). */
  initrd: string;
  /** Base kernel command line; callers append forkvm.hostname=..., forkvm.mkfs=1. */
  cmdline: string;
  /** `uname -r` inside the guest. */
  kernelVersion: string;
  /** Smallest guest memory (MiB) that boots to agent-ready, with a margin. */
  minMemoryMiB: number;
  /** Identifies the image content: sha256 over the kernel, initramfs and command line. */
  sha256: string;
}

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

/** What apt and dpkg are run with: they never ask a question. */
const DEBIAN_ENV = { DEBIAN_FRONTEND: "noninteractive" };

/** Bump when the layout of the initramfs or the manifest changes: it forces a rebuild. */
const BUILDER_REVISION = 2;
const KERNEL_META_PACKAGE = "linux-image-amd64";
const BUSYBOX_PACKAGE = "busybox-static";
const GUEST_SCRIPTS = ["init.sh", "agent.sh", "udhcpc.sh"] as const;

// ---------------------------------------------------------------------------------------------
// Manifest

const ImageInputs = z.object({
  builder: z.number().int(),
  kernelPackage: z.string(),
  kernelPackageVersion: z.string(),
  busyboxVersion: z.string(),
  scriptsSha256: z.string().regex(/^[0-9a-f]{64}$/),
  modules: z.array(z.string()),
  cmdline: z.string(),
  minMemoryMiB: z.number().int(),
}).strict();
type ImageInputs = z.infer<typeof ImageInputs>;

const Sha256 = z.string().regex(/^[0-9a-f]{64}$/);
const ImageManifest = z.object({
  version: z.literal(1),
  name: z.string(),
  /** The kernel file QEMU boots: vmlinux when the kernel has a PVH entry, else vmlinuz. */
  kernel: z.enum(["vmlinux", "vmlinuz"]),
  initrd: z.literal("initrd.img"),
  cmdline: z.string(),
  kernelVersion: z.string().min(1),
  minMemoryMiB: z.number().int().positive(),
  sha256: z.string().regex(/^[0-9a-f]{64}$/),
  files: z.object({ vmlinuz: Sha256, "initrd.img": Sha256, vmlinux: Sha256.optional() }).strict(),
  modules: z.array(z.string()),
  inputs: ImageInputs,
}).strict();
type ImageManifest = z.infer<typeof ImageManifest>;

// ---------------------------------------------------------------------------------------------
// Paths

/** `$FORKVM_CACHE`, else `${XDG_CACHE_HOME:-$HOME/.cache}/forkvm`. */
export function cacheDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.FORKVM_CACHE) return path.resolve(env.FORKVM_CACHE);
  const base = env.XDG_CACHE_HOME || path.join(env.HOME || os.homedir(), ".cache");
  return path.join(base, "forkvm");
}

function imageDir(cache: string, name: string): string {
  return path.join(cache, "images", name);
}

/** The guest scripts live next to this file in the source tree (dist/ does not copy them). */
function guestScript(name: string): string {
  const candidates = [path.join(__dirname, "guest", name), path.join(__dirname, "..", "..", "engine", "guest", name)];
  const found = candidates.find((p) => fs.existsSync(p));
  if (!found) throw new ForkvmError("IMAGE", `Cannot find guest script ${name}: looked in ${candidates.join(", ")}`);
  return found;
}

// ---------------------------------------------------------------------------------------------
// Loading

/**
 * The image `name` as last built. Throws NOT_FOUND when it was never built, STATE when its
 * manifest is unreadable or invalid, IMAGE when its files are missing (or, with `verify`,
 * do not match their recorded sha256).
 */
export async function loadImage(name = "default", opts: { cacheDir?: string; verify?: boolean } = {}): Promise<GuestImage> {
  const dir = imageDir(opts.cacheDir ?? cacheDir(), name);
  const manifest = readManifest(dir, name);
  if (!manifest) {
    throw new ForkvmError("NOT_FOUND", `Cannot load image ${name}: not built; run \`forkvm image build\``, { details: { dir } });
  }
  for (const [file, sum] of Object.entries(manifest.files)) {
    const p = path.join(dir, file);
    if (!fs.existsSync(p)) throw new ForkvmError("IMAGE", `Cannot load image ${name}: ${p} is missing; rebuild it with \`forkvm image build --force\``);
    if (opts.verify && (await sha256File(p)) !== sum) {
      throw new ForkvmError("IMAGE", `Cannot load image ${name}: ${p} does not match its manifest; rebuild it with \`forkvm image build --force\``);
    }
  }
  return toGuestImage(dir, manifest);
}

function readManifest(dir: string, name: string): ImageManifest | undefined {
  const file = path.join(dir, "image.json");
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw new ForkvmError("STATE", `Cannot read image ${name}: ${messageOf(err)}`, { cause: err });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new ForkvmError("STATE", `Cannot read image ${name}: ${file} is not JSON: ${messageOf(err)}`, { cause: err });
  }
  const parsed = ImageManifest.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new ForkvmError("STATE", `Cannot read image ${name}: ${file}: ${issue?.path.join(".") || "manifest"}: ${issue?.message}`, {
      details: { issues: parsed.error.issues },
    });
  }
  return parsed.data;
}

function toGuestImage(dir: string, m: ImageManifest): GuestImage {
  return {
    name: m.name,
    dir,
    kernel: path.join(dir, m.kernel),
    initrd: path.join(dir, m.initrd),
    cmdline: m.cmdline,
    kernelVersion: m.kernelVersion,
    minMemoryMiB: m.minMemoryMiB,
    sha256: m.sha256,
  };
}

// ---------------------------------------------------------------------------------------------
// Building

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
 * step fails (the message names the step; apt/dpkg stderr is in details.stderr).
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

  const upToDate = async (): Promise<GuestImage | undefined> => {
    if (opts.force) return undefined;
    const m = safeReadManifest(dir, name);
    if (!m || JSON.stringify(m.inputs) !== JSON.stringify(inputs)) return undefined;
    for (const [f, sum] of Object.entries(m.files)) {
      if ((await sha256File(path.join(dir, f)).catch(() => undefined)) !== sum) return undefined;
    }
    return toGuestImage(dir, m);
  };
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
    await run("dpkg", ["-x", deb, root], { what: `extract kernel package ${path.basename(deb)}`, code: "IMAGE", env: DEBIAN_ENV, timeoutMs: 300_000 });
    const kernelVersion = inputs.kernelPackage.replace(/^linux-image-/, "");
    const vmlinuz = path.join(root, "boot", `vmlinuz-${kernelVersion}`);
    const modRoot = path.join(root, "lib", "modules", kernelVersion);
    if (!fs.existsSync(vmlinuz) || !fs.existsSync(modRoot)) {
      throw new ForkvmError("IMAGE", `Cannot extract kernel package ${path.basename(deb)}: no boot/vmlinuz-${kernelVersion} or lib/modules/${kernelVersion} in it`);
    }

    progress("resolve kernel modules");
    const depFile = path.join(modRoot, "modules.dep");
    if (!fs.existsSync(depFile)) {
      // Debian generates modules.dep at install time (depmod in postinst): generate it the same way.
      await run(busyboxPath, ["depmod", "-b", root, kernelVersion], { what: "generate modules.dep", code: "IMAGE", timeoutMs: 120_000 });
    }
    const modules = moduleClosure(fs.readFileSync(depFile, "utf8"), MODULE_ROOTS);
    const compressed = modules.filter((m) => !m.endsWith(".ko"));
    if (compressed.length) {
      throw new ForkvmError("IMAGE", `Cannot resolve kernel modules: compressed modules are not supported (${compressed.join(", ")})`);
    }
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

function safeReadManifest(dir: string, name: string): ImageManifest | undefined {
  try {
    return readManifest(dir, name);
  } catch {
    return undefined;
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

// ---------------------------------------------------------------------------------------------
// Host packages

async function findBusybox(): Promise<{ path: string; version: string }> {
  let version: string;
  try {
    version = (await run("dpkg-query", ["-W", "-f=${Status}\t${Version}", BUSYBOX_PACKAGE], { what: `query ${BUSYBOX_PACKAGE}`, code: "HOST", env: DEBIAN_ENV })).trim();
  } catch (err) {
    throw new ForkvmError("HOST", `Cannot build image default: ${BUSYBOX_PACKAGE} is not installed; run scripts/setup.sh`, {
      cause: err,
      details: err instanceof ForkvmError ? err.details : {},
    });
  }
  const [status, ver] = version.split("\t");
  if (!status?.endsWith(" installed") || !ver) {
    throw new ForkvmError("HOST", `Cannot build image default: ${BUSYBOX_PACKAGE} is not installed; run scripts/setup.sh`);
  }
  const candidate = ["/usr/bin/busybox", "/bin/busybox"].find((p) => fs.existsSync(p));
  if (!candidate) throw new ForkvmError("HOST", `Cannot build image default: ${BUSYBOX_PACKAGE} is installed but /bin/busybox is missing`);
  return { path: fs.realpathSync(candidate), version: ver };
}

/**
 * The versioned kernel package that `linux-image-amd64` depends on, and its version: one
 * `apt-cache show` of the candidate meta package (its Depends pins "(= version)").
 */
async function resolveKernelPackage(): Promise<{ pkg: string; version: string }> {
  const meta = await run("apt-cache", ["show", "--no-all-versions", KERNEL_META_PACKAGE], { what: `resolve ${KERNEL_META_PACKAGE}`, code: "HOST", env: DEBIAN_ENV });
  const dep = parseKernelDepends(meta);
  if (!dep) {
    throw new ForkvmError("HOST", `Cannot resolve ${KERNEL_META_PACKAGE}: it depends on no linux-image-* package; run scripts/setup.sh (apt-get update)`, {
      details: { stdout: meta.split("\n").slice(0, 20).join("\n") },
    });
  }
  if (dep.version) return { pkg: dep.pkg, version: dep.version };
  const show = await run("apt-cache", ["show", "--no-all-versions", dep.pkg], { what: `resolve ${dep.pkg}`, code: "HOST", env: DEBIAN_ENV });
  const version = /^Version:\s*(\S+)/m.exec(show)?.[1];
  if (!version) throw new ForkvmError("HOST", `Cannot resolve ${dep.pkg}: apt-cache show printed no Version`);
  return { pkg: dep.pkg, version };
}

/**
 * The first versioned linux-image dependency (and its pinned version, if any) in the Depends
 * field of `apt-cache show` output, or in the "Depends:" lines of `apt-cache depends` output.
 */
export function parseKernelDepends(text: string): { pkg: string; version?: string } | undefined {
  for (const line of text.split("\n")) {
    const m = /^\s*\|?Depends:\s*(.*)$/.exec(line);
    if (!m) continue;
    for (const alt of m[1]!.split(/[,|]/)) {
      const d = /^\s*(linux-image-\d[^\s(]*)\s*(?:\(\s*=\s*([^\s)]+)\s*\))?/.exec(alt);
      if (d) return { pkg: d[1]!, ...(d[2] ? { version: d[2] } : {}) };
    }
  }
  return undefined;
}

/** The .deb of pkg=version in `debs`, downloaded with apt-get when not there yet. */
async function downloadKernel(debs: string, pkg: string, version: string): Promise<string> {
  fs.mkdirSync(debs, { recursive: true });
  const existing = await findDeb(debs, pkg, version);
  if (existing) return existing;
  const args = ["download", "-q", `${pkg}=${version}`];
  // As root apt would warn that its sandbox user cannot write here; it is our own cache.
  if (process.getuid?.() === 0) args.unshift("-o", "APT::Sandbox::User=root");
  await run("apt-get", args, { cwd: debs, what: `download ${pkg} ${version}`, code: "IMAGE", env: DEBIAN_ENV, timeoutMs: 600_000 });
  const deb = await findDeb(debs, pkg, version);
  if (!deb) throw new ForkvmError("IMAGE", `Cannot download ${pkg} ${version}: apt-get succeeded but left no matching .deb in ${debs}`);
  return deb;
}

async function findDeb(debs: string, pkg: string, version: string): Promise<string | undefined> {
  for (const f of fs.readdirSync(debs).sort()) {
    if (!f.startsWith(`${pkg}_`) || !f.endsWith(".deb")) continue;
    const file = path.join(debs, f);
    try {
      const fields = await run("dpkg-deb", ["-f", file, "Package", "Version"], { what: `read ${f}`, code: "IMAGE", env: DEBIAN_ENV });
      if (fields.includes(`Package: ${pkg}\n`) && fields.includes(`Version: ${version}\n`)) return file;
    } catch {
      fs.rmSync(file, { force: true }); // a truncated download
    }
  }
  return undefined;
}

function pruneDebs(debs: string, keep: string): void {
  for (const f of fs.readdirSync(debs)) {
    if (f.startsWith("linux-image-") && path.join(debs, f) !== keep) fs.rmSync(path.join(debs, f), { force: true });
  }
}

/**
 * The kernel as an uncompressed ELF when it can boot directly through its PVH entry (QEMU
 * `-kernel vmlinux`): under TCG this halves boot time, which was mostly the guest
 * decompressing its own xz payload. Undefined (boot the bzImage) when the payload is not
 * xz or gzip, `xz` is missing, or the ELF has no PVH entry.
 */
async function directBootKernel(bzImage: Buffer, log: Logger): Promise<Buffer | undefined> {
  const payload = bzImagePayload(bzImage);
  if (!payload) {
    log.log("warn", "the kernel is not a bzImage with a payload; booting it as it is");
    return undefined;
  }
  let elf: Buffer;
  if (payload.subarray(0, 6).equals(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]))) {
    try {
      // The payload ends with the kernel's 4-byte size: read only the first stream.
      elf = await runBytes("xz", ["-dc", "--single-stream"], { what: "decompress the kernel", code: "IMAGE", input: payload, timeoutMs: 120_000 });
    } catch (err) {
      log.log("warn", "cannot decompress the kernel for direct boot; booting the bzImage", { error: messageOf(err) });
      return undefined;
    }
  } else if (payload[0] === 0x1f && payload[1] === 0x8b) {
    elf = gunzipSync(payload);
  } else {
    log.log("warn", "the kernel payload is neither xz nor gzip; booting the bzImage");
    return undefined;
  }
  if (!hasPvhEntry(elf)) {
    log.log("warn", "the kernel has no PVH entry; booting the bzImage");
    return undefined;
  }
  return elf;
}

/** The compressed payload of a bzImage (boot protocol >= 2.08), or undefined. */
export function bzImagePayload(bz: Buffer): Buffer | undefined {
  if (bz.length < 0x250 || bz.toString("latin1", 0x202, 0x206) !== "HdrS" || bz.readUInt16LE(0x206) < 0x208) return undefined;
  const setupSects = bz[0x1f1] || 4;
  const start = (setupSects + 1) * 512 + bz.readUInt32LE(0x248);
  const end = start + bz.readUInt32LE(0x24c);
  return end <= bz.length ? bz.subarray(start, end) : undefined;
}

/** True when a little-endian ELF64 carries the Xen PVH entry note (owner "Xen", type 18). */
export function hasPvhEntry(elf: Buffer): boolean {
  if (elf.length < 64 || elf.readUInt32BE(0) !== 0x7f454c46 || elf[4] !== 2 || elf[5] !== 1) return false;
  const phoff = Number(elf.readBigUInt64LE(0x20));
  const phentsize = elf.readUInt16LE(0x36);
  const phnum = elf.readUInt16LE(0x38);
  for (let i = 0; i < phnum; i++) {
    const ph = phoff + i * phentsize;
    if (ph + 0x28 > elf.length || elf.readUInt32LE(ph) !== 4 /* PT_NOTE */) continue;
    let off = Number(elf.readBigUInt64LE(ph + 8));
    const end = Math.min(elf.length, off + Number(elf.readBigUInt64LE(ph + 0x20)));
    while (off + 12 <= end) {
      const namesz = elf.readUInt32LE(off);
      const descsz = elf.readUInt32LE(off + 4);
      const type = elf.readUInt32LE(off + 8);
      const name = elf.toString("latin1", off + 12, off + 12 + namesz).replace(/\0+$/, "");
      if (name === "Xen" && type === 18) return true;
      off += 12 + Math.ceil(namesz / 4) * 4 + Math.ceil(descsz / 4) * 4;
    }
  }
  return false;
}

// ---------------------------------------------------------------------------------------------
// Files

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

// ---------------------------------------------------------------------------------------------
// Pure parts: modules.dep closure and newc cpio

/** The module name of a path in modules.dep: basename without .ko[.xz|.zst|.gz], '-' as '_'. */
export function moduleName(file: string): string {
  return path.posix.basename(file).replace(/\.ko(\.(xz|zst|gz))?$/, "").replace(/-/g, "_");
}

/** modules.dep as a map from module path to the paths it depends on. */
export function parseModulesDep(text: string): Map<string, string[]> {
  const deps = new Map<string, string[]>();
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!line || line.startsWith("#")) continue;
    const colon = line.indexOf(":");
    if (colon <= 0) throw new ForkvmError("IMAGE", `Cannot parse modules.dep: no ':' in line "${line}"`);
    deps.set(line.slice(0, colon).trim(), line.slice(colon + 1).trim().split(/\s+/).filter(Boolean));
  }
  return deps;
}

/**
 * The paths of `roots` (module names) and everything they depend on, in load order: every
 * module after all of its dependencies; otherwise in the order of `roots`. Throws IMAGE when a
 * root is unknown or the dependencies form a cycle.
 */
export function moduleClosure(depText: string, roots: string[]): string[] {
  const deps = parseModulesDep(depText);
  const byName = new Map<string, string>();
  for (const p of deps.keys()) byName.set(moduleName(p), p);
  const order: string[] = [];
  const state = new Map<string, "visiting" | "done">();
  const visit = (p: string, chain: string[]) => {
    const s = state.get(p);
    if (s === "done") return;
    if (s === "visiting") throw new ForkvmError("IMAGE", `Cannot resolve kernel modules: dependency cycle ${[...chain, p].map(moduleName).join(" -> ")}`);
    state.set(p, "visiting");
    for (const d of deps.get(p) ?? []) visit(d, [...chain, p]);
    state.set(p, "done");
    order.push(p);
  };
  for (const r of roots) {
    const p = byName.get(r.replace(/-/g, "_"));
    if (!p) throw new ForkvmError("IMAGE", `Cannot resolve kernel modules: ${r} is not in modules.dep (built in, or missing from the kernel package?)`);
    visit(p, []);
  }
  return order;
}

export type CpioEntry =
  | { path: string; type: "dir"; mode?: number }
  | { path: string; type: "file"; mode?: number; data: Buffer }
  | { path: string; type: "symlink"; target: string }
  | { path: string; type: "char"; mode?: number; major: number; minor: number };

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;

/**
 * A newc ("070701") cpio archive of `entries`, byte-identical for the same entries in any order:
 * sorted by path, owner root, mtime 0, inode numbers by position. Throws IMAGE on duplicates.
 */
export function cpioArchive(entries: CpioEntry[]): Buffer {
  const sorted = [...entries].map((e) => ({ ...e, path: e.path.replace(/^\/+/, "").replace(/\/+$/, "") }));
  sorted.sort((a, b) => Buffer.compare(Buffer.from(a.path), Buffer.from(b.path)));
  const parts: Buffer[] = [];
  const pad = (n: number) => Buffer.alloc((4 - (n % 4)) % 4);
  const header = (f: { ino: number; mode: number; nlink: number; size: number; rmaj: number; rmin: number; name: string }) => {
    const name = Buffer.from(`${f.name}\0`);
    const fields = [f.ino, f.mode, 0, 0, f.nlink, 0, f.size, 0, 0, f.rmaj, f.rmin, name.length, 0];
    const h = Buffer.from("070701" + fields.map((v) => v.toString(16).padStart(8, "0")).join(""), "ascii");
    parts.push(h, name, pad(h.length + name.length));
  };
  let ino = 1;
  let prev = "";
  for (const e of sorted) {
    if (!e.path) throw new ForkvmError("IMAGE", "Cannot write cpio archive: an entry has an empty path");
    if (e.path === prev) throw new ForkvmError("IMAGE", `Cannot write cpio archive: ${e.path} appears twice`);
    prev = e.path;
    let data: Buffer = Buffer.alloc(0);
    let mode: number;
    let rmaj = 0;
    let rmin = 0;
    switch (e.type) {
      case "dir":
        mode = S_IFDIR | (e.mode ?? 0o755);
        break;
      case "file":
        mode = S_IFREG | (e.mode ?? 0o644);
        data = e.data;
        break;
      case "symlink":
        mode = S_IFLNK | 0o777;
        data = Buffer.from(e.target);
        break;
      case "char":
        mode = S_IFCHR | (e.mode ?? 0o600);
        rmaj = e.major;
        rmin = e.minor;
        break;
    }
    header({ ino: ino++, mode, nlink: e.type === "dir" ? 2 : 1, size: data.length, rmaj, rmin, name: e.path });
    parts.push(data, pad(data.length));
  }
  header({ ino: 0, mode: 0, nlink: 1, size: 0, rmaj: 0, rmin: 0, name: "TRAILER!!!" });
  return Buffer.concat(parts);
}

/**
 * The entries of the tree under `root` with normalised metadata: directories 0755, files 0755
 * when any execute bit is set else 0644, symlinks as they are. Throws IMAGE on other file types.
 */
export async function treeEntries(root: string): Promise<CpioEntry[]> {
  const out: CpioEntry[] = [];
  const walk = async (rel: string) => {
    const names = (await fs.promises.readdir(path.join(root, rel))).sort();
    for (const n of names) {
      const r = rel ? `${rel}/${n}` : n;
      const full = path.join(root, r);
      const st = await fs.promises.lstat(full);
      if (st.isDirectory()) {
        out.push({ path: r, type: "dir", mode: 0o755 });
        await walk(r);
      } else if (st.isFile()) {
        out.push({ path: r, type: "file", mode: st.mode & 0o111 ? 0o755 : 0o644, data: await fs.promises.readFile(full) });
      } else if (st.isSymbolicLink()) {
        out.push({ path: r, type: "symlink", target: await fs.promises.readlink(full) });
      } else {
        throw new ForkvmError("IMAGE", `Cannot archive ${full}: not a file, directory or symlink`);
      }
    }
  };
  await walk("");
  return out;
}
