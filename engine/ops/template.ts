// Freeze a parent into a powered-on template: memory image (tmpfs, with a copy on disk) + device
// checkpoint + base disk, immutable files that no longer depend on the parent process. Two modes:
//   frozen  — stop, save the device state (RAM stays in the shared memory file), the parent is consumed;
//   running — live-migrate to a stream (the source pauses a few ms), snapshot its disk onto a fresh
//             overlay, resume it; a paused builder QEMU turns the stream into a normal template.
// Everything that can fail is done while the parent still runs; a parent that was paused is always
// resumed on failure; once a frozen parent's QEMU has quit, the capture only rolls forward.
import * as fs from "node:fs";
import * as path from "node:path";
import { randomBytes } from "node:crypto";
import type { z } from "zod";
import type { Ctx } from "../context";
import { ForkvmError, messageOf } from "../errors";
import type { TemplateManifest, VmManifest } from "../state/manifest";
import { transition } from "../state/transitions";
import { TemplateArgs, parseArgs } from "../spec";
import { fsInfo } from "../host";
import { createDisk, isAlive, killQemu, qemuImgBinary } from "../qemu/process";
import { Qmp } from "../qemu/qmp";
import { vmPaths, type MachineShape } from "../qemu/argv";
import { grantQemu, type QemuUser } from "../qemu/run-as";
import { waitMigration, waitStatus } from "../qemu/wait";
import { Undo } from "../undo";
import { sha256 } from "../util/hash";
import { run } from "../util/run";
import { ensureOverlayPrototype, memoryImagePath, saveMemoryImage } from "../instance/template-files";
import { installedQemu, type QemuIdentity } from "../host";
import { receiveToFile, sendCheckpoint, type Receiver } from "../instance/checkpoint-io";
import { beginCapture } from "../instance/recovery";
import { newToken } from "../instance/identity";
import { qemuFailure, quitInstance, requireAlive, startInstance } from "../instance/launch";

export { TemplateArgs };

const MiB = 1048576;

function newGeneration(): string {
  return `g${Date.now().toString(36)}${randomBytes(3).toString("hex")}`;
}

/**
 * Test-only fault injection: `FORKVM_TEST_FAULT=<point>` makes a capture fail at that point,
 * `<point>:kill` SIGKILLs this process there. Points: frozen-paused, frozen-saved, frozen-consumed,
 * running-paused, running-snapshotted, running-built.
 */
function faultPoint(point: string): void {
  const [at, how] = (process.env.FORKVM_TEST_FAULT ?? "").split(":");
  if (at !== point) return;
  if (how === "kill") process.kill(process.pid, "SIGKILL");
  throw new ForkvmError("HOST", `Cannot go on with the capture: test fault at ${point}`);
}

/** Resolves like `p`, or throws TIMEOUT after `ms`. */
async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new ForkvmError("TIMEOUT", `Cannot ${what}: not done within ${ms} ms`)), ms); });
  try {
    return await Promise.race([p, late]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Waits for an outgoing migration into `rx`; when it fails, the receiving side's reason (a full
 * disk, say) is thrown if it has one, as it says more than QEMU's "failed".
 */
async function migrateInto(qmp: Qmp, rx: Receiver, deadlineMs: number, what: string): Promise<Awaited<ReturnType<typeof waitMigration>>> {
  try {
    return await waitMigration(qmp, deadlineMs, what);
  } catch (err) {
    const why = await Promise.race([rx.done.then(() => undefined, (e: unknown) => e), new Promise((r) => setTimeout(r, 200, undefined))]);
    throw why ?? err;
  }
}

/**
 * Saves the device state of a paused VM whose RAM is in a shared file (x-ignore-shared) to
 * `statePath`, through a unix socket in `sockDir` the engine listens on (QEMU may not fork).
 */
async function saveCheckpoint(qmp: Qmp, sockDir: string, statePath: string, what: string, qemu: QemuUser | undefined): Promise<void> {
  const rx = await receiveToFile(path.join(sockDir, "save.sock"), statePath, { qemu });
  try {
    await qmp.execute("migrate-set-capabilities", { capabilities: [{ capability: "x-ignore-shared", state: true }] });
    await qmp.execute("migrate", { uri: rx.uri });
    await migrateInto(qmp, rx, 60_000, what);
    await within(rx.done, 30_000, what);
  } finally {
    rx.close();
  }
}

/** CPU time (ns) of every thread of a process so far; undefined when it is gone. */
function cpuNs(pid: number): number | undefined {
  try {
    let sum = 0;
    for (const task of fs.readdirSync(`/proc/${pid}/task`)) {
      sum += Number(fs.readFileSync(`/proc/${pid}/task/${task}/schedstat`, "utf8").split(" ")[0]) || 0;
    }
    return sum;
  } catch {
    return undefined;
  }
}

/** Idle: under 2% of a CPU in each of two consecutive 100 ms windows (an idle guest uses ~0.4%). */
const QUIET_WINDOW_MS = 100;
const QUIET_NS = 0.02 * QUIET_WINDOW_MS * 1e6;

/**
 * Waits until the VM's QEMU has been idle for two windows, or `timeoutMs` passed. Returns the
 * milliseconds waited and whether it went quiet. A template taken from a busy guest makes every
 * child finish that work after its fork, with a cold translation cache (measured: a guest frozen
 * right after boot costs each child ~290 ms of CPU in its first 300 ms; frozen once quiet, ~70 ms).
 */
export async function waitQuiet(pid: number, timeoutMs: number): Promise<{ waitedMs: number; quiet: boolean }> {
  const t0 = Date.now();
  let prev = cpuNs(pid);
  let calm = 0;
  while (prev !== undefined && Date.now() - t0 < timeoutMs) {
    await new Promise((r) => setTimeout(r, QUIET_WINDOW_MS));
    const cur = cpuNs(pid);
    if (cur === undefined) break;
    calm = cur - prev < QUIET_NS ? calm + 1 : 0;
    prev = cur;
    if (calm >= 2) return { waitedMs: Date.now() - t0, quiet: true };
  }
  return { waitedMs: Date.now() - t0, quiet: false };
}

/** What a capture needs, all made or checked before the parent is paused. */
interface Prepared {
  generation: string;
  /** The parent's shape with the template's own kernel and initrd. */
  shape: MachineShape;
  qemu: QemuIdentity;
  statePath: string;
  /** The template's memory image in tmpfs, and its copy on disk. */
  memoryPath: string;
  imagePath: string;
  /** The template's base disk (in its directory), when the parent has a disk. */
  diskPath?: string;
}

/**
 * Creates a template from a running parent. Throws INVALID_ARGUMENT, NOT_FOUND (parent, or a boot
 * file of the parent that is gone), ALREADY_EXISTS, CONFLICT (parent not running), HOST (no room
 * in tmpfs or on disk), MIGRATION, QMP, QEMU or TIMEOUT. On a failure before the parent is
 * consumed, the parent runs on (resumed if it was paused) and nothing of the template is left; a
 * frozen capture that fails after the parent's QEMU quit leaves the parent `stopped` with its own
 * files (or, past the last manifest write, the template whole): a parent's disk is never deleted.
 */
export async function createTemplate(ctx: Ctx, input: TemplateArgs): Promise<TemplateManifest> {
  const args = parseArgs(TemplateArgs, input, "create template");
  const { store } = ctx;
  return store.withLock("vms", args.parent, async () => {
    const parent = store.getVm(args.parent);
    transition(parent, args.source === "frozen" ? "capture-frozen" : "capture-running");
    requireAlive(parent);
    const dir = store.reserve("templates", args.name);
    const undo = new Undo(ctx.log);
    undo.push("remove template directory", () => store.remove("templates", args.name));
    try {
      const prep = prepare(ctx, parent, args, dir);
      const quiesce = args.quiesceTimeoutMs > 0 ? await waitQuiet(parent.pid!, args.quiesceTimeoutMs) : { waitedMs: 0, quiet: false };
      if (args.quiesceTimeoutMs > 0 && !quiesce.quiet) ctx.log.log("warn", `parent ${parent.name} is still busy after ${quiesce.waitedMs} ms; its children will finish that work after their fork`, { vm: parent.name });
      const t = args.source === "frozen"
        ? await freeze(ctx, parent, args.name, prep, quiesce.waitedMs, undo)
        : await liveCapture(ctx, parent, args, dir, prep, quiesce.waitedMs, undo);
      // Children's delta disks are copies of it; without it each fork runs qemu-img instead.
      await ensureOverlayPrototype(t).catch((err) => ctx.log.log("warn", `the empty overlay of template ${t.name} could not be made (${messageOf(err)}); forks make their own`, { template: t.name }));
      ctx.log.log("info", "template created", { template: t.name, generation: t.generation, ...t.timings });
      return t;
    } catch (err) {
      await undo.run();
      throw err;
    }
  });
}

/**
 * Everything that can fail before the parent is touched: its boot files kept by the template,
 * the QEMU version recorded, room in tmpfs and on disk, paths usable for sockets and links.
 */
function prepare(ctx: Ctx, parent: VmManifest, args: z.infer<typeof TemplateArgs>, dir: string): Prepared {
  const { store } = ctx;
  const what = `create template ${args.name}`;
  if (args.source === "running") {
    const longest = path.join(dir, "builder", "console.sock");
    if (Buffer.byteLength(longest) > 107) {
      throw new ForkvmError("INVALID_ARGUMENT", `Cannot ${what}: the builder's socket ${longest} is too long for a unix socket; use a shorter name or FORKVM_HOME`, { details: { field: "name" } });
    }
  }
  const diskPath = parent.diskPath ? path.join(dir, "disk.qcow2") : undefined;
  if (parent.diskPath && fs.statSync(parent.diskPath).dev !== fs.statSync(dir).dev) {
    throw new ForkvmError("HOST", `Cannot ${what}: the parent's disk ${parent.diskPath} is on another filesystem than ${dir} (the template links it)`);
  }
  // Room: the memory image on disk holds at most the pages the guest touched; in `running` mode,
  // tmpfs holds the stream and the new memory image (each at most that) until the builder is done.
  const touched = fs.statSync(parent.memoryPath).blocks * 512;
  const home = fsInfo(path.dirname(dir));
  const needDisk = Math.ceil(touched / MiB) + 64;
  if (home.freeMiB < needDisk) throw new ForkvmError("HOST", `Cannot ${what}: ${path.dirname(dir)} has ${home.freeMiB} MiB free, the template's memory image and checkpoint need up to ${needDisk} MiB`);
  if (args.source === "running") {
    const tmpfs = fsInfo(store.memDir);
    const needTmpfs = 2 * Math.ceil(touched / MiB) + 64;
    if (tmpfs.freeMiB < needTmpfs) throw new ForkvmError("HOST", `Cannot ${what}: ${store.memDir} has ${tmpfs.freeMiB} MiB free, a running capture of ${parent.name} needs up to ${needTmpfs} MiB (stream + memory image)`);
  }
  return {
    generation: newGeneration(),
    shape: keepBootFiles(parent, dir, what),
    qemu: installedQemu(),
    statePath: path.join(dir, "state.bin"),
    memoryPath: store.memoryPath("templates", args.name),
    imagePath: memoryImagePath(dir),
    diskPath,
  };
}

/**
 * The template keeps its own kernel and initrd (hard links, or copies across filesystems): its
 * children start QEMU with them, and persistent children cold-boot them, long after the image
 * cache they came from was rebuilt or removed. Throws NOT_FOUND naming a boot file that is gone.
 */
function keepBootFiles(parent: VmManifest, dir: string, what: string): MachineShape {
  const keep = (field: "kernel" | "initrd", base: string) => {
    const from = parent.shape[field];
    const to = path.join(dir, base);
    try {
      try { fs.linkSync(from, to); } catch { fs.copyFileSync(from, to); }
      fs.chmodSync(to, 0o444);
    } catch (err) {
      const gone = (err as NodeJS.ErrnoException).code === "ENOENT";
      throw new ForkvmError(gone ? "NOT_FOUND" : "HOST", `Cannot ${what}: ${gone ? `the parent's ${field} ${from} is gone (the template keeps its own copy of the kernel and initrd the parent booted; put the file back)` : `cannot keep the parent's ${field} ${from}: ${messageOf(err)}`}`, { cause: err, details: { field, file: from } });
    }
    return to;
  };
  return { ...parent.shape, kernel: keep("kernel", "kernel"), initrd: keep("initrd", "initrd") };
}

function templateOf(parent: VmManifest, name: string, source: "frozen" | "running", prep: Prepared, image: { sha256: string; dataBytes: number }, timings: Record<string, number>): TemplateManifest {
  const state = fs.readFileSync(prep.statePath);
  return {
    version: 1, kind: "template", name, generation: prep.generation, createdAt: new Date().toISOString(), source,
    parent: parent.name, shape: prep.shape, memoryPath: prep.memoryPath, statePath: prep.statePath, stateBytes: state.length,
    stateSha256: sha256(state), diskPath: prep.diskPath, parentMac: parent.mac, parentHostname: parent.hostname, egress: parent.egress ?? "nat", timings,
    memoryImage: { path: prep.imagePath, ...image }, qemu: prep.qemu,
  };
}

/**
 * The template's files are read-only: nothing may write them once children map them. Owner-only
 * (0400): a QEMU that dropped root (qemu/run-as.ts) never opens them after the drop, so it cannot
 * read another template's memory, checkpoint or disk either.
 */
function makeReadOnly(t: TemplateManifest): void {
  for (const f of [t.memoryPath, t.statePath, t.diskPath]) if (f) fs.chmodSync(f, 0o400);
}

/**
 * frozen: the parent's memory file and disk become the template's; the parent is consumed.
 * Until its QEMU has quit, a failure resumes the parent (undo). After that, roll forward: the
 * parent's manifest says `consumed` first (so it never runs again on files it now shares with the
 * template), then the template's manifest, then the parent's own names of those files go.
 */
async function freeze(ctx: Ctx, parent: VmManifest, name: string, prep: Prepared, quiesceMs: number, undo: Undo): Promise<TemplateManifest> {
  const { store } = ctx;
  const pdir = store.dir("vms", parent.name);
  // The template's names for the parent's memory and disk: hard links now (removed with the
  // template's directory on undo), the only names once the parent is consumed. (A memory file of
  // this name is a leftover: the name's directory was just reserved.)
  fs.rmSync(prep.memoryPath, { force: true });
  fs.linkSync(parent.memoryPath, prep.memoryPath);
  if (parent.diskPath) fs.linkSync(parent.diskPath, prep.diskPath!);
  const qmp = await Qmp.connect(vmPaths(pdir).qmp, 5000, () => isAlive(parent.pid, parent.token));
  // Should this process die from here on, gc (or start) resumes the parent or finishes the capture.
  const mark = beginCapture(ctx, parent, name, "frozen");
  undo.push("clear the capture mark", () => mark.end());
  const t0 = Date.now();
  let freezeMs = 0;
  let imageMs = 0;
  let image: { sha256: string; dataBytes: number };
  try {
    await qmp.execute("stop");
    undo.push("resume the parent", () => qmp.execute("cont").catch(() => undefined));
    faultPoint("frozen-paused");
    await saveCheckpoint(qmp, pdir, prep.statePath, `save the checkpoint of ${parent.name}`, ctx.store.qemuUser());
    freezeMs = Date.now() - t0;
    // The guest is stopped: its memory file no longer changes. Copy it to disk now, while a
    // failure (a full disk) can still resume the parent.
    const i0 = Date.now();
    image = await saveMemoryImage(parent.memoryPath, prep.imagePath);
    imageMs = Date.now() - i0;
    faultPoint("frozen-saved");
    await quitInstance(qmp, parent.pid, parent.token);
  } catch (err) {
    await undo.run();
    qmp.close();
    throw err;
  }
  // The parent's QEMU is gone. From here on nothing is undone: the capture rolls forward.
  undo.commit();
  const t = templateOf(parent, name, "frozen", prep, image, { freezeMs, downtimeMs: freezeMs, memoryImageMs: imageMs, quiesceMs });
  // Written without the capture mark: a consumed parent is what recovery finishes too.
  const consumed: VmManifest = { ...parent, state: "consumed", pid: undefined, templates: [...(parent.templates ?? []), name], op: undefined };
  const giveBack = (err: unknown): never => {
    // The parent keeps its own files (the template only linked them): it is stopped, not lost.
    try { store.writeVm({ ...parent, state: "stopped", pid: undefined, op: undefined }); } catch (e) { ctx.log.log("error", `parent ${parent.name}: ${messageOf(e)}`, { vm: parent.name }); }
    store.remove("templates", name);
    throw new ForkvmError(err instanceof ForkvmError ? err.code : "HOST", `Cannot create template ${name}: ${messageOf(err)}; parent ${parent.name} is stopped with its memory and disk (start it again)`, { cause: err });
  };
  try {
    store.writeVm(consumed);
  } catch (err) {
    giveBack(err);
  }
  const modes = [t.memoryPath, t.diskPath].map((f) => f && fs.statSync(f).mode & 0o7777);
  try {
    faultPoint("frozen-consumed");
    makeReadOnly(t);
    store.writeTemplate(t);
  } catch (err) {
    [t.memoryPath, t.diskPath].forEach((f, i) => { if (f) fs.chmodSync(f, modes[i] as number); });
    giveBack(err);
  }
  // The template has the parent's memory and disk now: drop the parent's names of them.
  try {
    fs.rmSync(parent.memoryPath, { force: true });
    if (parent.diskPath) fs.rmSync(parent.diskPath, { force: true });
    store.writeVm({ ...consumed, diskPath: t.diskPath });
  } catch (err) {
    ctx.log.log("warn", `parent ${parent.name}: its old names of the template's files stay (${messageOf(err)})`, { vm: parent.name });
  }
  return t;
}

/**
 * The parent's disk becomes the template's base while the parent runs on an overlay: prepared
 * before the pause (the base gets a second name in the parent's directory, the overlay is made on
 * it), swapped in the pause (the overlay takes the disk's name, then QEMU moves onto it). At every
 * point the parent's disk name is either its disk or an overlay on it, so the parent's manifest
 * never changes and a crash loses none of its writes.
 */
async function prepareDiskSwap(qmp: Qmp, parent: VmManifest, prep: Prepared, undo: Undo, qemu: QemuUser | undefined): Promise<{ swap: () => Promise<void> }> {
  const disk = parent.diskPath!;
  const pdir = path.dirname(disk);
  const blocks = await qmp.execute<Array<{ device: string; inserted?: { image?: { "virtual-size"?: number } } }>>("query-block");
  const size = blocks.find((b) => b.device === "disk0")?.inserted?.image?.["virtual-size"];
  if (!size) throw new ForkvmError("QMP", `Cannot snapshot the disk of ${parent.name}: QEMU did not report its size`);
  const base = path.join(pdir, `disk-${prep.generation}.qcow2`);
  const next = path.join(pdir, `disk-next-${prep.generation}.qcow2`);
  let swapped = false;
  fs.linkSync(disk, prep.diskPath!); // the template's base (removed with its directory on undo)
  fs.linkSync(disk, base);
  undo.push("remove the disk's second name", () => { if (!swapped) fs.rmSync(base, { force: true }); });
  undo.push("remove the prepared overlay", () => fs.rmSync(next, { force: true }));
  // -u: the base is open read-write in the parent's QEMU, so qemu-img must not open it.
  await run(qemuImgBinary(), ["create", "-q", "-f", "qcow2", "-u", "-b", base, "-F", "qcow2", next, String(size)], { what: `create the overlay of ${parent.name}` });
  grantQemu(qemu, next, "rw"); // the parent's QEMU opens it after it dropped root (qemu/run-as.ts)
  return {
    swap: async () => {
      fs.renameSync(next, disk);
      swapped = true; // from here the disk's name is the overlay on `base`: both stay, whatever happens
      await qmp.execute("blockdev-snapshot-sync", { device: "disk0", "snapshot-file": disk, format: "qcow2", mode: "existing" });
    },
  };
}

/** running: live migration to a stream, disk snapshot and resume in the pause, then a builder. */
async function liveCapture(ctx: Ctx, parent: VmManifest, args: z.infer<typeof TemplateArgs>, dir: string, prep: Prepared, quiesceMs: number, undo: Undo): Promise<TemplateManifest> {
  const { store } = ctx;
  const pdir = store.dir("vms", parent.name);
  const stream = store.memFile("templates", args.name, "stream");
  undo.push("remove the migration stream", () => fs.rmSync(stream, { force: true }));
  const qmp = await Qmp.connect(vmPaths(pdir).qmp, 5000, () => isAlive(parent.pid, parent.token));
  undo.push("close the parent's monitor", () => qmp.close());
  const qemu = store.qemuUser();
  const disk = parent.diskPath ? await prepareDiskSwap(qmp, parent, prep, undo, qemu) : undefined;
  const rx = await receiveToFile(path.join(pdir, "save.sock"), stream, { atomic: false, qemu }); // only the builder reads it
  undo.push("stop receiving the stream", () => rx.close());
  // Should this process die while the parent is paused, gc (or start) resumes it.
  const mark = beginCapture(ctx, parent, args.name, "running");
  const t0 = Date.now();
  let mig: Awaited<ReturnType<typeof waitMigration>>;
  try {
    ctx.progress?.({ step: "migrate", message: `live-capturing ${parent.name}` });
    await qmp.execute("migrate-set-capabilities", { capabilities: [{ capability: "x-ignore-shared", state: false }] });
    await qmp.execute("migrate-set-parameters", { "downtime-limit": args.downtimeLimitMs });
    await qmp.execute("migrate", { uri: rx.uri });
    try {
      mig = await migrateInto(qmp, rx, 300_000, `live-capture ${parent.name}`);
    } catch (err) {
      await qmp.execute("migrate_cancel").catch(() => undefined);
      throw err;
    }
    // The source is paused (postmigrate). Its disk becomes the template's base: QEMU moves onto
    // the overlay so the source's later writes never reach the template.
    faultPoint("running-paused");
    await disk?.swap();
    faultPoint("running-snapshotted");
    await qmp.execute("cont");
  } catch (err) {
    // Whatever failed, the parent runs on (a failed migration resumes it by itself; a completed one does not).
    await qmp.execute("cont").catch((e) => ctx.log.log("error", `parent ${parent.name} could not be resumed: ${messageOf(e)}`, { vm: parent.name }));
    throw err;
  } finally {
    mark.end(); // a parent still paused now is resumed by gc (a running parent left paused)
  }
  const stop = qmp.events.find((e) => e.event === "STOP");
  const resume = [...qmp.events].reverse().find((e) => e.event === "RESUME");
  const downtimeMs = stop && resume ? resume.atMs - stop.atMs : undefined;
  qmp.close();
  await within(rx.done, 60_000, `receive the live capture of ${parent.name}`);
  rx.close();
  const captureMs = Date.now() - t0;

  // The builder: paused, incoming, on the template's new memory file (shared), loads the stream,
  // then saves the device state with x-ignore-shared exactly like a frozen template.
  const b0 = Date.now();
  fs.rmSync(prep.memoryPath, { force: true }); // a leftover: the name's directory was just reserved
  undo.push("remove template memory", () => fs.rmSync(prep.memoryPath, { force: true }));
  const bdir = path.join(dir, "builder");
  fs.mkdirSync(bdir, { mode: 0o700 });
  grantQemu(qemu, bdir, "dir");
  const scratch = path.join(bdir, "scratch.qcow2");
  if (prep.diskPath) await createDisk(scratch, { backing: prep.diskPath });
  if (prep.diskPath) grantQemu(qemu, scratch, "rw"); // reopened after the load, like a child's disk
  const token = newToken();
  const { pid, qmp: bq } = await startInstance(parent.shape, {
    token, dir: bdir, memory: { path: prep.memoryPath, share: true }, diskPath: prep.diskPath ? scratch : undefined,
    mac: parent.mac, forwards: [], incoming: true, paused: true,
    // No way out for the builder: every VM carries the same (restricted) user-mode network whose
    // state the checkpoint holds, so egress only adds a passt the builder never uses.
    egress: "none", runAs: qemu,
  });
  undo.push("kill the builder", () => killQemu(pid, token, 500));
  const load = vmPaths(bdir).incoming;
  try {
    // An unprivileged builder (qemu/run-as.ts) listens there since it started (bound as root).
    if (!qemu) await bq.execute("migrate-incoming", { uri: `unix:${load}` });
    const sent = sendCheckpoint(load, { file: stream });
    sent.catch(() => undefined); // QEMU's own failure (below) says more; the send is awaited after
    await waitStatus(bq, ["paused"], 120_000, () => isAlive(pid, token), "load the live capture into the builder");
    await sent;
    await saveCheckpoint(bq, bdir, prep.statePath, "save the template checkpoint from the builder", qemu);
  } catch (err) {
    throw qemuFailure(bdir, `build template ${args.name}`, err);
  } finally {
    await quitInstance(bq, pid, token);
  }
  const buildMs = Date.now() - b0;
  const i0 = Date.now();
  const image = await saveMemoryImage(prep.memoryPath, prep.imagePath);
  const imageMs = Date.now() - i0;
  faultPoint("running-built");
  fs.rmSync(bdir, { recursive: true, force: true });
  fs.rmSync(stream, { force: true });
  const t = templateOf(parent, args.name, "running", prep, image, {
    freezeMs: Date.now() - t0, captureMs, buildMs, memoryImageMs: imageMs, quiesceMs,
    ...(downtimeMs !== undefined ? { downtimeMs: Math.round(downtimeMs * 100) / 100 } : {}),
    ...(mig.downtimeMs !== undefined ? { qemuDowntimeMs: mig.downtimeMs } : {}),
    ...(mig.bytes !== undefined ? { streamBytes: mig.bytes } : {}),
  });
  makeReadOnly(t);
  store.writeTemplate(t);
  undo.commit();
  try {
    store.writeVm({ ...store.getVm(parent.name), templates: [...(parent.templates ?? []), args.name] });
  } catch (err) {
    ctx.log.log("warn", `parent ${parent.name}: the list of its templates was not updated (${messageOf(err)})`, { vm: parent.name });
  }
  return t;
}
