// A template's files (memory image in tmpfs and its copy on disk, device checkpoint, base disk,
// the empty delta-disk prototype), the QEMU that made them, and the one check of whether a
// template can be forked: whole, and runnable by the QEMU installed now.
import * as fs from "node:fs";
import * as fsp from "node:fs/promises";
import * as path from "node:path";
import { createHash, randomBytes, type Hash } from "node:crypto";
import * as lockfile from "proper-lockfile";
import { ForkvmError, messageOf } from "../errors";
import type { TemplateManifest } from "../state/manifest";
import { Store } from "../state/store";
import { binaryId, fsInfo, installedQemu, kvmUsable } from "../host";
import { createDisk } from "../qemu/process";
import { sha256 } from "../util/hash";
import { fsyncDir } from "../util/atomic-write";

const MiB = 1048576;

/**
 * What is wrong with a template, if anything: a memory image missing from tmpfs with no copy on
 * disk to restore it from, or truncated; a checkpoint missing or (with `deep`) not matching its
 * checksum; a missing base disk; a QEMU or accelerator on this host other than the one that
 * captured it (with the way out).
 */
export function templateProblems(t: TemplateManifest, opts: { deep?: boolean } = {}): string[] {
  const problems: string[] = [];
  const mem = fs.statSync(t.memoryPath, { throwIfNoEntry: false });
  if (!mem) {
    if (!restorable(t)) problems.push(`memory image ${t.memoryPath} is missing${t.memoryImage ? ` and so is its copy ${t.memoryImage.path}` : ""}`);
  } else if (mem.size < t.shape.memoryMiB * MiB) problems.push(`memory image ${t.memoryPath} is truncated`);
  if (!fs.existsSync(t.statePath)) problems.push(`checkpoint ${t.statePath} is missing`);
  else if (opts.deep && sha256(fs.readFileSync(t.statePath)) !== t.stateSha256) problems.push(`checkpoint ${t.statePath} does not match its checksum`);
  if (t.diskPath && !fs.existsSync(t.diskPath)) problems.push(`base disk ${t.diskPath} is missing`);
  problems.push(...hostProblems(t));
  return problems;
}

/**
 * Checks that the template can be forked and returns the checkpoint it checked: children load
 * exactly these bytes. A memory image a reboot removed from tmpfs is first put back from its copy
 * on disk (see `restoreMemory`). Throws STATE naming what is wrong (a QEMU other than the one that
 * captured it: STATE, saying to capture again from the parent), HOST (no room in tmpfs to
 * restore), CONFLICT (the template's lock stayed held).
 */
export function checkTemplate(t: TemplateManifest): Buffer {
  const host = hostProblems(t);
  if (host.length) throw new ForkvmError("STATE", `Cannot fork template ${t.name}: ${host.join("; ")}`, { details: { problems: host, reason: "host" } });
  restoreMemory(t);
  const problems = templateProblems(t);
  if (problems.length) throw new ForkvmError("STATE", `Cannot fork template ${t.name}: ${problems.join("; ")}`, { details: { problems } });
  const state = fs.readFileSync(t.statePath);
  if (sha256(state) !== t.stateSha256) {
    throw new ForkvmError("STATE", `Cannot fork template ${t.name}: checkpoint ${t.statePath} does not match its checksum`, { details: { problems: ["checksum"] } });
  }
  return state;
}

/** Where a template keeps an empty delta disk on its base: every child's starts as a copy of it. */
export function overlayPrototypePath(t: TemplateManifest): string {
  return path.join(path.dirname(t.statePath), "overlay.qcow2");
}

/**
 * Makes the template's empty overlay once (qemu-img), so that a child's delta disk is a file copy
 * (~0.1 ms) instead of a qemu-img process (~15 ms). An empty qcow2 overlay does not depend on its
 * own path, only on the backing file's. Written to a temp name and renamed: never seen half-made.
 */
export async function ensureOverlayPrototype(t: TemplateManifest): Promise<string | undefined> {
  if (!t.diskPath) return undefined;
  const proto = overlayPrototypePath(t);
  if (fs.existsSync(proto)) return proto;
  const tmp = `${proto}.${process.pid}.${randomBytes(3).toString("hex")}`;
  try {
    await createDisk(tmp, { backing: t.diskPath });
    fs.renameSync(tmp, proto);
  } finally {
    fs.rmSync(tmp, { force: true });
  }
  return proto;
}

// ---------------------------------------------------------------------------------------------
// The memory image on disk: tmpfs is emptied by a reboot, the template's directory is not.

/** Where a template keeps the on-disk copy of its memory image (next to its checkpoint). */
export function memoryImagePath(templateDir: string): string {
  return path.join(templateDir, "memory.img");
}

const PAGE = 4096;
const CHUNK = 4 * MiB;
const ZERO_PAGE = Buffer.alloc(PAGE);

/**
 * The digest of a memory image that does not depend on how it is stored: sha256 over the non-zero
 * 4 KiB pages in order, then a bitmap of which pages are non-zero. Zero pages are holes on disk.
 */
class PageDigest {
  private readonly hash: Hash = createHash("sha256");
  private readonly bitmap: Buffer;
  dataBytes = 0;

  constructor(size: number) {
    this.bitmap = Buffer.alloc(Math.ceil(Math.ceil(size / PAGE) / 8));
  }

  /** The runs [start, end) of non-zero pages in `buf[0, n)`, which holds the image from `offset` (page-aligned). */
  scan(buf: Buffer, n: number, offset: number): Array<[number, number]> {
    const runs: Array<[number, number]> = [];
    let start = -1;
    for (let p = 0; p < n; p += PAGE) {
      const end = Math.min(p + PAGE, n);
      const zero = buf.subarray(p, end).equals(end - p === PAGE ? ZERO_PAGE : ZERO_PAGE.subarray(0, end - p));
      if (!zero) {
        const page = (offset + p) / PAGE;
        this.bitmap[page >> 3] |= 1 << (page & 7);
        if (start < 0) start = p;
      } else if (start >= 0) {
        runs.push([start, p]);
        start = -1;
      }
    }
    if (start >= 0) runs.push([start, n]);
    for (const [s, e] of runs) {
      this.hash.update(buf.subarray(s, e));
      this.dataBytes += e - s;
    }
    return runs;
  }

  digest(): string {
    return this.hash.update(this.bitmap).digest("hex");
  }
}

/** O_EXCL | O_NOFOLLOW: a temp name is never a file or a link someone else put there. */
const CREATE_NEW = fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW;

/** A temp name next to `file` of the form gc knows as an atomic write's (`.tmp-<pid>-<hex>`). */
function tempNameOf(file: string): string {
  return `${file}.tmp-${process.pid}-${randomBytes(4).toString("hex")}`;
}

/**
 * Copies a memory image (tmpfs) to `to` on disk, zero pages as holes: read-only, fsynced, renamed
 * into place, so `to` is whole or absent. Returns its digest and how many bytes are not zero.
 * Throws HOST when it cannot be written (e.g. the disk is full).
 */
export async function saveMemoryImage(from: string, to: string): Promise<{ sha256: string; dataBytes: number }> {
  const tmp = tempNameOf(to);
  const src = await fsp.open(from, "r");
  let dst: fsp.FileHandle | undefined;
  try {
    const size = (await src.stat()).size;
    dst = await fsp.open(tmp, CREATE_NEW, 0o400);
    const digest = new PageDigest(size);
    const buf = Buffer.allocUnsafe(CHUNK);
    for (let off = 0; off < size; off += CHUNK) {
      const want = Math.min(CHUNK, size - off);
      let n = 0;
      while (n < want) {
        const { bytesRead } = await src.read(buf, n, want - n, off + n);
        if (bytesRead === 0) throw new Error(`${from} ended at ${off + n} bytes, expected ${size}`);
        n += bytesRead;
      }
      for (const [s, e] of digest.scan(buf, n, off)) await dst.write(buf, s, e - s, off + s);
    }
    await dst.truncate(size);
    await dst.sync();
    await dst.close();
    dst = undefined;
    fs.chmodSync(tmp, 0o400); // owner-only, like the template's other files (ops/template.ts makeReadOnly)
    fs.renameSync(tmp, to);
    fsyncDir(path.dirname(to));
    return { sha256: digest.digest(), dataBytes: digest.dataBytes };
  } catch (err) {
    throw new ForkvmError("HOST", `Cannot save the memory image ${from} to ${to}: ${messageOf(err)}`, { cause: err });
  } finally {
    await src.close().catch(() => undefined);
    await dst?.close().catch(() => undefined);
    fs.rmSync(tmp, { force: true });
  }
}

/** Whether the template's memory image can be put back from its copy on disk. */
function restorable(t: TemplateManifest): boolean {
  if (!t.memoryImage) return false;
  const img = fs.statSync(t.memoryImage.path, { throwIfNoEntry: false });
  return img !== undefined && img.size === t.shape.memoryMiB * MiB;
}

/** The store a template lives in, from its own paths (<home>/templates/<name>/state.bin; memory dir of its memory file). */
function storeOf(t: TemplateManifest): Store {
  const dir = path.dirname(t.statePath);
  if (path.basename(path.dirname(dir)) !== "templates") throw new ForkvmError("STATE", `Cannot locate template ${t.name}: ${t.statePath} is not in a templates directory`);
  return new Store(path.dirname(path.dirname(dir)), path.dirname(t.memoryPath));
}

/** A lock not refreshed for this long belongs to a holder that died (the store's value). */
const LOCK_STALE_MS = 15_000;
/** How long a restore waits for the template's lock (another process restoring it, a fork reserving names, an rm). */
const RESTORE_LOCK_WAIT_MS = 30_000;

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/**
 * Puts a template's memory image back in tmpfs from its copy on disk when it is missing there (a
 * reboot emptied tmpfs), under the template's lock: into a new temp file, checked against its
 * digest, made read-only, then renamed, so a child never maps a half-copied or damaged file.
 * Synchronous, because the fork path's check is. Returns true when it restored the image.
 * Throws HOST (no room in tmpfs), STATE (the copy does not match its digest), CONFLICT (the lock).
 */
export function restoreMemory(t: TemplateManifest): boolean {
  if (fs.existsSync(t.memoryPath) || !restorable(t)) return false;
  const store = storeOf(t);
  store.init(); // a reboot also removed the memory directory
  const file = store.lockPath("templates", t.name);
  const until = Date.now() + RESTORE_LOCK_WAIT_MS;
  let release: (() => void) | undefined;
  while (!release) {
    try {
      release = lockfile.lockSync(file, { realpath: false, lockfilePath: file, stale: LOCK_STALE_MS, onCompromised: () => undefined });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ELOCKED") throw new ForkvmError("CONFLICT", `Cannot lock template ${t.name}: ${messageOf(err)}`, { cause: err });
      if (fs.existsSync(t.memoryPath)) return false; // restored by the holder meanwhile
      if (Date.now() > until) throw new ForkvmError("CONFLICT", `Cannot restore the memory image of template ${t.name}: its lock ${file} stayed held for ${RESTORE_LOCK_WAIT_MS} ms; try again`, { details: { lock: file } });
      sleepSync(50);
    }
  }
  try {
    // Under the lock: restored by someone else meanwhile, or the template removed (rm holds this lock).
    if (fs.existsSync(t.memoryPath) || !fs.existsSync(store.manifestPath("templates", t.name)) || !restorable(t)) return false;
    copyBack(store, t, t.memoryImage!, () => { try { const now = new Date(); fs.utimesSync(file, now, now); } catch { /* released below */ } });
    return true;
  } finally {
    release();
  }
}

/** Copies the on-disk image into tmpfs (holes stay holes), verifying the digest before the rename. */
function copyBack(store: Store, t: TemplateManifest, img: NonNullable<TemplateManifest["memoryImage"]>, keepLock: () => void): void {
  const memDir = path.dirname(t.memoryPath);
  const freeBytes = fsInfo(memDir).freeMiB * MiB;
  if (freeBytes < img.dataBytes + 64 * MiB) {
    throw new ForkvmError("HOST", `Cannot restore the memory image of template ${t.name}: ${memDir} has ${Math.floor(freeBytes / MiB)} MiB free, it needs ${Math.ceil(img.dataBytes / MiB) + 64} MiB`);
  }
  const size = t.shape.memoryMiB * MiB;
  // The temp file needs a name of the template's that gc and rm know: its capture's stream name,
  // unused once the template exists. A restore cut short leaves it to the next restore or rm.
  const tmp = store.memFile("templates", t.name, "stream");
  fs.rmSync(tmp, { force: true });
  const src = fs.openSync(img.path, "r");
  let dst: number | undefined;
  try {
    dst = fs.openSync(tmp, CREATE_NEW, 0o600);
    const digest = new PageDigest(size);
    const buf = Buffer.allocUnsafe(CHUNK);
    let touched = Date.now();
    for (let off = 0; off < size; off += CHUNK) {
      const want = Math.min(CHUNK, size - off);
      let n = 0;
      while (n < want) {
        const got = fs.readSync(src, buf, n, want - n, off + n);
        if (got === 0) throw new ForkvmError("STATE", `Cannot restore the memory image of template ${t.name}: ${img.path} ended at ${off + n} bytes, expected ${size}`);
        n += got;
      }
      for (const [s, e] of digest.scan(buf, n, off)) fs.writeSync(dst, buf, s, e - s, off + s);
      // A long copy blocks the event loop, so the lock's own refresh cannot run: refresh it here.
      if (Date.now() - touched > 2000) { keepLock(); touched = Date.now(); }
    }
    fs.ftruncateSync(dst, size);
    if (digest.digest() !== img.sha256) {
      throw new ForkvmError("STATE", `Cannot restore the memory image of template ${t.name}: ${img.path} does not match its checksum; the template must be captured again`, { details: { problems: ["memory image checksum"] } });
    }
    fs.fchmodSync(dst, 0o400); // owner-only, like the template's other files (ops/template.ts makeReadOnly)
    fs.closeSync(dst);
    dst = undefined;
    fs.renameSync(tmp, t.memoryPath);
  } catch (err) {
    if (err instanceof ForkvmError) throw err;
    throw new ForkvmError("HOST", `Cannot restore the memory image of template ${t.name} from ${img.path}: ${messageOf(err)}`, { cause: err });
  } finally {
    fs.closeSync(src);
    if (dst !== undefined) fs.closeSync(dst);
    fs.rmSync(tmp, { force: true });
  }
}

// ---------------------------------------------------------------------------------------------
// The QEMU a template needs: the one that captured it (device state and machine types are
// QEMU's own format), under the same accelerator.

/** What this host lacks to run the template's children: the same QEMU version, a usable KVM. */
function hostProblems(t: TemplateManifest): string[] {
  const problems: string[] = [];
  if (t.qemu) {
    let now: string | undefined;
    try {
      // The same binary as at capture (and no test override): the same version, nothing to run.
      now = t.qemu.id && !process.env.FORKVM_TEST_QEMU_VERSION && binaryId(t.qemu.binary) === t.qemu.id ? t.qemu.version : installedQemu().version;
    } catch (err) {
      problems.push(messageOf(err));
    }
    if (now !== undefined && now !== t.qemu.version) {
      problems.push(`it was captured with QEMU ${t.qemu.version} (machine ${t.shape.machine}, accel ${t.shape.accel}) and this host now runs QEMU ${now}, which may not load its checkpoint: ${wayOut(t)}`);
    }
  }
  if (t.shape.accel === "kvm" && !kvmUsable()) problems.push(`it was captured under KVM and /dev/kvm is not usable on this host: ${wayOut(t)}`);
  return problems;
}

/** "capture again from the parent <name>", saying when the parent cannot be captured any more. */
function wayOut(t: TemplateManifest): string {
  let state: string | undefined;
  try {
    const m = JSON.parse(fs.readFileSync(storeOf(t).manifestPath("vms", t.parent), "utf8")) as { state?: string };
    state = m.state;
  } catch { /* gone */ }
  if (state === undefined) return `capture again from the parent (${t.parent} no longer exists: boot a new parent)`;
  if (state === "consumed") return `capture again from the parent (${t.parent} was consumed by a frozen capture: boot it anew)`;
  return `capture again from the parent ${t.parent} (forkvm template create <name> --parent ${t.parent})`;
}
