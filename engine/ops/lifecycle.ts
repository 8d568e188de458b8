// A VM's life after creation: status reconciled with its process, stop/start/reset, exec,
// removal (idempotent; a template with children is kept unless forced), garbage collection (only
// what is provably garbage, under the objects' locks) and the report of what is half-made or unreadable.
import * as fs from "node:fs";
import * as path from "node:path";
import { ForkvmError, messageOf } from "../errors";
import type { Ctx } from "../context";
import type { TemplateManifest, VmManifest } from "../state/manifest";
import { KINDS, memFileOwner, privateMemDir, type Kind, type ObjectHealth } from "../state/store";
import { statusOf, transition, type VmStatus } from "../state/transitions";
import { isAlive, killQemu } from "../qemu/process";
import { findQemu, isLive, listQemus, livePid, qemusUnder, type QemuProcess } from "../qemu/find";
import { interrupted, recoverVm, unmadeTemplateOf } from "../instance/recovery";
import { fault } from "../util/fault";
import { Qmp } from "../qemu/qmp";
import { vmPaths } from "../qemu/argv";
import { Undo } from "../undo";
import { parseArgs, Metadata } from "../spec";
import { agentFor, quitInstance, requireAlive, withAgent } from "../instance/launch";
import { bootVm } from "../instance/boot";
import { forkInto } from "../instance/fork-into";
import { checkTemplate } from "../instance/template-files";
import { writeMetadata } from "../instance/metadata";

export { statusOf, type VmStatus };

export interface VmInfo extends VmManifest {
  /** The manifest's state reconciled with the process: a dead `running` VM is `crashed`. */
  status: VmStatus;
}

export function info(vm: VmManifest): VmInfo {
  // A QEMU recorded before its spawn has a token and no pid yet: show the pid it has.
  const pid = vm.pid ?? (vm.state === "creating" || vm.state === "starting" ? findQemu(vm.token, recentQemus()) : undefined);
  return { ...vm, pid, status: statusOf(vm) };
}

/** One /proc scan shared by the `info` calls of one listing (a fleet being forked has many VMs without a pid yet). */
let scan: { at: number; all: QemuProcess[] } | undefined;
function recentQemus(): QemuProcess[] {
  if (!scan || Date.now() - scan.at > 200) scan = { at: Date.now(), all: listQemus() };
  return scan.all;
}

/** Children that depend on a template (linked clones), whatever their state. Full clones do not. */
export function childrenOf(ctx: Ctx, template: string, vms: VmManifest[] = ctx.store.listVms()): VmManifest[] {
  return vms.filter((v) => v.template?.name === template && v.clone !== "full");
}

/**
 * Stops a VM. Persistent children and parents keep their disk (start cold-boots from it);
 * a non-persistent child loses its delta disk (start forks it afresh). Safe to repeat.
 */
export async function stopVm(ctx: Ctx, name: string): Promise<VmInfo> {
  const { store } = ctx;
  return store.withLock("vms", name, async () => {
    const vm = await recovered(ctx, name);
    const to = transition(vm, "stop");
    const dir = store.dir("vms", name);
    const keepsDisk = vm.role === "parent" || vm.persistent === true;
    vm.pid = livePid(vm.pid, vm.token); // a QEMU recorded before its spawn has no pid yet
    if (isAlive(vm.pid, vm.token) && keepsDisk) {
      const agent = agentFor(dir);
      await agent.exec(["sync"], { timeoutMs: 10_000 }).catch((err) => ctx.log.log("warn", `sync before stop failed: ${messageOf(err)}`, { vm: name }));
      agent.close();
      const qmp = await Qmp.connect(vmPaths(dir).qmp, 2000, () => isAlive(vm.pid, vm.token)).catch(() => undefined);
      // `quit` lets QEMU flush its own caches of the disk before it goes.
      await quitInstance(qmp, vm.pid, vm.token);
    }
    await killQemu(vm.pid, vm.token, 3000); // a no-op after quitInstance
    if (!keepsDisk && vm.diskPath) fs.rmSync(vm.diskPath, { force: true });
    const stopped: VmManifest = { ...vm, state: to, pid: undefined, op: undefined };
    store.writeVm(stopped);
    return info(stopped);
  });
}

/**
 * Starts a stopped (or crashed) VM: parents and persistent children cold-boot from their own
 * disk (a parent runs its init commands again, so it is warm again); non-persistent children are
 * forked afresh from their template. Every VM gets its metadata again. Throws CONFLICT when it
 * runs already, NOT_FOUND when a non-persistent child's template is gone, AGENT when an init
 * command fails (the VM is then left stopped).
 */
export async function startVm(ctx: Ctx, name: string, deadlineMs = 300_000): Promise<VmInfo> {
  const { store } = ctx;
  return store.withLock("vms", name, async () => {
    const vm = await recovered(ctx, name);
    transition(vm, "start");
    return relaunch(ctx, vm, (undo) =>
      vm.role === "child" && !vm.persistent
        ? forkInto(ctx, wholeTemplateOf(ctx, vm), vm, deadlineMs, undo)
        : bootVm(ctx, vm, deadlineMs, undo));
  });
}

/** The template a child forks from, checked whole. Throws NOT_FOUND or STATE. */
function wholeTemplateOf(ctx: Ctx, vm: VmManifest): TemplateManifest {
  const t = ctx.store.getTemplate(vm.template!.name);
  checkTemplate(t);
  return t;
}

/** The VM (whose lock the caller holds) after what an interrupted operation left on it is finished (recoverVm). Throws NOT_FOUND. */
async function recovered(ctx: Ctx, name: string): Promise<VmManifest> {
  const vm = ctx.store.getVm(name);
  if (!interrupted(vm)) return vm;
  const done = await recoverVm(ctx, vm);
  if (done) ctx.log.log("info", done, { vm: name });
  return ctx.store.getVm(name);
}

/**
 * Starts a new instance of `vm` with `launch`. The VM is `starting` (naming this process) before
 * anything is spawned, and `launch` records each QEMU's token before spawning it, so a crash at
 * any point leaves a VM that `ls` shows `interrupted` and gc stops. A failure is undone and leaves
 * the VM `stopped`.
 */
async function relaunch(ctx: Ctx, vm: VmManifest, launch: (undo: Undo) => Promise<void>): Promise<VmInfo> {
  // Whatever an interrupted start left running under the old token goes first.
  await killQemu(livePid(vm.pid, vm.token), vm.token, 500);
  Object.assign(vm, { state: "starting", pid: undefined, op: undefined });
  ctx.store.writeVm(vm);
  const undo = new Undo(ctx.log);
  try {
    await launch(undo);
  } catch (err) {
    await undo.run();
    ctx.store.writeVm({ ...vm, state: "stopped", pid: undefined, op: undefined });
    throw err;
  }
  vm.state = "running";
  ctx.store.writeVm(vm);
  return info(ctx.store.getVm(vm.name));
}

/**
 * Returns a non-persistent child to the template's state, in place: same name, MAC and
 * hostname, a fresh delta disk and memory. Throws CONFLICT for parents and persistent children.
 */
export async function resetVm(ctx: Ctx, name: string, deadlineMs = 60_000): Promise<VmInfo> {
  const { store } = ctx;
  return store.withLock("vms", name, async () => {
    const vm = await recovered(ctx, name);
    transition(vm, "reset");
    const t = wholeTemplateOf(ctx, vm); // before the running instance is killed
    await killQemu(livePid(vm.pid, vm.token), vm.token, 500);
    return relaunch(ctx, vm, (undo) => forkInto(ctx, t, vm, deadlineMs, undo));
  });
}

/**
 * Replaces a VM's metadata: in its manifest, and in the guest when it runs (a stopped VM gets it
 * at its next start). Throws NOT_FOUND, INVALID_ARGUMENT (a bad key) or AGENT.
 */
export async function setMetadata(ctx: Ctx, name: string, input: Record<string, string>): Promise<VmInfo> {
  const metadata = parseArgs(Metadata, input, `set the metadata of ${name}`);
  const { store } = ctx;
  return store.withLock("vms", name, async () => {
    const vm = { ...store.getVm(name), metadata };
    transition(vm, "set-metadata");
    // The manifest first: a guest that misses this write gets it at its next start or reset.
    store.writeVm(vm);
    if (isAlive(vm.pid, vm.token)) await withAgent(store.dir("vms", name), (agent) => writeMetadata(agent, metadata));
    return info(vm);
  });
}

/** Runs argv in the guest (verbatim, no shell). Throws NOT_FOUND, CONFLICT, AGENT or TIMEOUT. */
export async function execVm(ctx: Ctx, name: string, argv: string[], opts: { stdin?: Buffer | string; timeoutMs?: number } = {}) {
  const vm = ctx.store.getVm(name);
  transition(vm, "exec");
  requireAlive(vm);
  return withAgent(ctx.store.dir("vms", name), (agent) => agent.exec(argv, opts));
}

export interface RemoveResult {
  name: string;
  kind: "vm" | "template" | "pool" | "absent";
  removed: string[];
}

/** Kills every QEMU of a VM (by pid or, recorded before its spawn, by token) and any QEMU serving its directory, then removes it. */
async function removeVmNow(ctx: Ctx, name: string, vm: VmManifest | undefined): Promise<void> {
  const dir = ctx.store.dir("vms", name);
  const all = listQemus();
  if (vm) await killQemu(livePid(vm.pid, vm.token, all), vm.token, 1000);
  await killAll(qemusUnder(dir, all));
  if (vm?.diskPath?.startsWith(ctx.store.memDir + "/")) fs.rmSync(vm.diskPath, { force: true });
  ctx.store.remove("vms", name);
}

async function killAll(qemus: QemuProcess[]): Promise<void> {
  for (const q of qemus) await killQemu(q.pid, q.token, 1000);
}

/** The manifest, or undefined when it is missing or unreadable (rm removes those too). */
function readable<T>(find: () => T | undefined): T | undefined {
  try {
    return find();
  } catch {
    return undefined;
  }
}

/**
 * Removes VMs and templates by name; a name that is not there is reported as `absent` (so it is
 * safe to repeat). A template that still has children throws HAS_CHILDREN naming them, unless
 * `force`, which removes the children first. A half-made or unreadable object is removed too,
 * with every QEMU serving its directory (a template's builder included).
 */
export async function remove(ctx: Ctx, names: string[], opts: { force?: boolean } = {}): Promise<RemoveResult[]> {
  const { store } = ctx;
  const out: RemoveResult[] = [];
  for (const name of names) {
    if (store.exists("templates", name)) {
      out.push(await store.withLock("templates", name, async () => {
        const kids = childrenOf(ctx, name);
        if (kids.length && !opts.force) {
          throw new ForkvmError("HAS_CHILDREN", `Cannot remove template ${name}: it has ${kids.length} children (${kids.slice(0, 10).map((k) => k.name).join(", ")}${kids.length > 10 ? ", …" : ""}); remove them first or use --force`, { details: { children: kids.map((k) => k.name) } });
        }
        for (const k of kids) await store.withLock("vms", k.name, async () => removeVmNow(ctx, k.name, readable(() => store.findVm(k.name))));
        await killAll(qemusUnder(store.dir("templates", name)));
        const t = readable(() => store.findTemplate(name));
        if (t) fs.rmSync(t.memoryPath, { force: true });
        store.remove("templates", name);
        return { name, kind: "template" as const, removed: [...kids.map((k) => k.name), name] };
      }));
    } else if (store.exists("vms", name)) {
      out.push(await store.withLock("vms", name, async () => {
        await removeVmNow(ctx, name, readable(() => store.findVm(name)));
        return { name, kind: "vm" as const, removed: [name] };
      }));
    } else {
      out.push({ name, kind: "absent", removed: [] });
    }
  }
  return out;
}

/** An object that holds no valid manifest, or a VM whose operation was interrupted, as `ls` reports it. */
export interface Problem {
  kind: "vm" | "template" | "pool";
  name: string;
  /**
   * creating: a create in flight (its process lives); abandoned: a create whose process died (gc
   * removes it); damaged: a manifest that does not validate; unknown-version: a manifest of a
   * newer forkvm. (A VM with a valid manifest shows its state in listVms instead.)
   */
  status: "creating" | "abandoned" | "damaged" | "unknown-version";
  /** Why, and what to do. */
  message: string;
  /** What `gc` does with it. */
  gc: "removes" | "leaves";
}

/** Objects without a valid manifest older than this and with no record of who reserved them (an older forkvm's) count as abandoned. */
const LEGACY_ABANDONED_MS = 60_000;

const KIND_OF: Record<Kind, Problem["kind"]> = { vms: "vm", templates: "template", pools: "pool" };

/** Whether a directory without a manifest is provably abandoned: its reserving process is gone (or, with no record, it is old). */
function abandonedReservation(h: Extract<ObjectHealth, { health: "reserved" }>, minAgeMs: number): boolean {
  return h.by ? !isLive(h.by) : h.ageMs > Math.max(minAgeMs, 1000);
}

/** Every object `ls` cannot list (no valid manifest): creates in flight, abandoned ones, damaged or newer manifests. */
export function problems(ctx: Ctx, minAgeMs = LEGACY_ABANDONED_MS): Problem[] {
  return ctx.store.problems().map((h): Problem => {
    const base = { kind: KIND_OF[h.kind], name: h.name };
    const where = ctx.store.dir(h.kind, h.name);
    switch (h.health) {
      case "reserved":
        return abandonedReservation(h, minAgeMs)
          ? { ...base, status: "abandoned", gc: "removes", message: `${where} has no manifest: its create was interrupted${h.by ? ` (pid ${h.by.pid} is gone)` : ""}; gc removes it` }
          : { ...base, status: "creating", gc: "leaves", message: `being created${h.by ? ` by pid ${h.by.pid}` : ""}` };
      case "unknown-version":
        return { ...base, status: "unknown-version", gc: "leaves", message: h.message };
      default:
        return { ...base, status: "damaged", gc: "leaves", message: `${"message" in h ? h.message : "unreadable"}; forkvm will not guess what it was: inspect ${where}, then \`forkvm rm ${h.name}\` removes it (and any QEMU serving it)` };
    }
  });
}

export interface GcReport {
  /** Objects removed (`vms/<name>`, ...) and files removed (paths). */
  removed: string[];
  /** VMs whose interrupted operation gc finished (stopped, resumed), one line each. */
  recovered: string[];
  /** What gc left alone although nothing runs it: damaged or newer manifests, disks it cannot prove are garbage. */
  left: Array<{ object: string; why: string }>;
  /** Objects whose lock a live process holds: skipped this time. */
  busy: string[];
}

/** How long gc waits for an object's lock before it skips the object as busy. */
const GC_LOCK_WAIT_MS = 2000;

/**
 * Removes and finishes only what is provably garbage, holding each object's lock (so it is safe
 * alongside any operation, and a second run removes nothing):
 * - directories without a manifest and `creating` VMs whose reserving or creating process is gone
 *   (their QEMU, found by pid, token or directory, is killed first) — with no such record (an
 *   older forkvm's), once older than `minAgeMs`;
 * - interrupted starts (stopped), interrupted captures (parent resumed, files put back) and parents
 *   left paused (recoverVm);
 * - files in the memory directory whose names forkvm owns (MEM_FILES), of objects that no longer
 *   exist, referenced by no manifest and older than `minAgeMs`; every other file there is not
 *   forkvm's and is never touched;
 * - what crashed removals and lock holders left (`.trash-*`, dead locks, temp files of dead writers).
 * Never touched: damaged manifests, manifests of a newer forkvm, a directory holding a disk that
 * is nobody's copy (an interrupted capture may have moved a parent's disk there): reported in `left`.
 * Throws HOST (before touching anything) when the memory directory is not private (privateMemDir).
 */
export async function collect(ctx: Ctx, minAgeMs = LEGACY_ABANDONED_MS): Promise<GcReport> {
  const { store } = ctx;
  // Never sweep a memory directory that is not this user's own (FORKVM_MEMDIR=/dev/shm: other programs' files).
  if (fs.existsSync(store.memDir)) privateMemDir(store.memDir);
  const report: GcReport = { removed: [], recovered: [], left: [], busy: [] };
  const underLock = async (kind: Kind, name: string, fn: () => Promise<void>) => {
    try {
      await store.withLock(kind, name, fn, GC_LOCK_WAIT_MS);
    } catch (err) {
      if (err instanceof ForkvmError && err.code === "CONFLICT" && err.details.lock) report.busy.push(`${kind}/${name}`);
      else report.left.push({ object: `${kind}/${name}`, why: messageOf(err) });
    }
  };
  // VMs first: a parent's interrupted capture is put back before its template's directory goes.
  for (const kind of KINDS) {
    for (const name of store.names(kind)) {
      const first = store.probe(kind, name);
      if (first.health === "ok" && !(kind === "vms" && needsGc(ctx, first.manifest as VmManifest))) continue;
      if (first.health === "reserved" && !abandonedReservation(first, minAgeMs)) continue;
      if (first.health === "damaged" || first.health === "unknown-version") {
        report.left.push({ object: `${kind}/${name}`, why: first.message });
        continue;
      }
      await underLock(kind, name, async () => {
        const h = store.probe(kind, name); // again, under the lock
        if (h.health === "ok" && kind === "vms") {
          const vm = h.manifest as VmManifest;
          if (vm.state === "creating" && abandonedCreate(vm, minAgeMs, store.reservation(kind, name)?.ageMs ?? 0)) {
            await removeAbandoned(ctx, kind, name, vm, report);
          } else {
            const done = await recoverVm(ctx, vm, { checkPaused: true });
            if (done) report.recovered.push(done);
          }
        } else if (h.health === "reserved" && abandonedReservation(h, minAgeMs)) {
          const why = keepsUnprovenData(ctx, kind, name);
          if (why) report.left.push({ object: `${kind}/${name}`, why });
          else await removeAbandoned(ctx, kind, name, undefined, report);
        }
      });
    }
  }
  await collectMemFiles(ctx, minAgeMs, report);
  for (const t of store.trash()) { fs.rmSync(t, { recursive: true, force: true }); report.removed.push(t); }
  report.removed.push(...store.sweepLocks(), ...deadTempFiles(ctx));
  return report;
}

/**
 * Removes what an interrupted operation left behind (see collect) and returns what it did: the
 * objects and files removed and the VMs recovered, one line each. See `collect` for the report
 * with what was left alone and why.
 */
export async function gc(ctx: Ctx, minAgeMs = LEGACY_ABANDONED_MS): Promise<string[]> {
  const r = await collect(ctx, minAgeMs);
  return [...r.removed, ...r.recovered];
}

/** Whether a valid VM manifest may hold something for gc (a create, start or capture whose process died; a parent maybe left paused or consumed by nothing). */
function needsGc(ctx: Ctx, vm: VmManifest): boolean {
  if (vm.state === "creating") return !vm.op || !isLive(vm.op.by);
  if (interrupted(vm) || unmadeTemplateOf(ctx, vm)) return true;
  return vm.state === "running" && (vm.role === "parent" || Boolean(vm.templates?.length)) && isAlive(vm.pid, vm.token);
}

/** A `creating` VM is abandoned when its creator is gone; one with no record of its creator (an older forkvm's), when old and without a live QEMU. */
function abandonedCreate(vm: VmManifest, minAgeMs: number, ageMs: number): boolean {
  if (vm.op) return !isLive(vm.op.by);
  return ageMs > minAgeMs && !livePid(vm.pid, vm.token);
}

/** Kills every QEMU of a half-made object (by token, by directory: a builder too) and removes it with its memory files. */
async function removeAbandoned(ctx: Ctx, kind: Kind, name: string, vm: VmManifest | undefined, report: GcReport): Promise<void> {
  const dir = ctx.store.dir(kind, name);
  const all = listQemus();
  if (vm) await killQemu(livePid(vm.pid, vm.token, all), vm.token, 500);
  await killAll(qemusUnder(dir, all));
  fault("gc:removing");
  if (vm?.diskPath?.startsWith(ctx.store.memDir + "/")) fs.rmSync(vm.diskPath, { force: true });
  ctx.store.remove(kind, name);
  report.removed.push(`${kind}/${name}`);
}

/**
 * Why a half-made object's directory cannot be proven garbage, if it cannot: a template directory
 * holding a disk that is its only link (a running capture hard-links the parent's disk; a frozen
 * capture moves it, so a lone disk may be a parent's only copy), unless a VM still names it.
 */
function keepsUnprovenData(ctx: Ctx, kind: Kind, name: string): string | undefined {
  if (kind !== "templates") return undefined;
  const disk = path.join(ctx.store.dir(kind, name), "disk.qcow2");
  let links: number;
  try { links = fs.statSync(disk).nlink; } catch { return undefined; }
  if (links > 1) return undefined;
  return `${disk} is the only copy of a disk and no manifest refers to it (an interrupted frozen capture may have moved its parent's disk here): move it back to the parent's directory, or \`forkvm rm ${name}\` to delete it`;
}

/** Memory-directory files of names forkvm owns whose object is gone and which no manifest refers to (see collect). */
async function collectMemFiles(ctx: Ctx, minAgeMs: number, report: GcReport): Promise<void> {
  const { store } = ctx;
  let files: string[] = [];
  try { files = fs.readdirSync(store.memDir); } catch { return; }
  const referenced = new Set<string>();
  for (const v of store.listVms()) { referenced.add(v.memoryPath); if (v.diskPath) referenced.add(v.diskPath); }
  for (const t of store.listTemplates()) referenced.add(t.memoryPath);
  const old = (p: string) => { try { return Date.now() - fs.lstatSync(p).mtimeMs > minAgeMs; } catch { return false; } };
  for (const f of files) {
    const owner = memFileOwner(f);
    const file = path.join(store.memDir, f);
    if (!owner || referenced.has(file) || !old(file)) continue;
    if (store.kindOf(owner.name)) continue; // its object (or another of that name) exists: its own rules apply
    // Hold the name while deleting, so no create of that name can start using the file meanwhile.
    const release = store.claimName(owner.kind, owner.name);
    if (!release) continue;
    try {
      if (!referenced.has(file)) { fs.rmSync(file, { force: true }); report.removed.push(file); }
    } finally {
      release();
    }
  }
}

/**
 * Temp files of atomic writes (`<file>.tmp-<pid>-<hex>`) whose writer no longer runs: in object
 * directories, and in the memory directory for files whose names forkvm owns.
 */
function deadTempFiles(ctx: Ctx): string[] {
  const out: string[] = [];
  const sweep = (dir: string, mine: (base: string) => boolean) => {
    let entries: string[] = [];
    try { entries = fs.readdirSync(dir); } catch { return; }
    for (const f of entries) {
      const m = /^(.+)\.tmp-(\d+)-[0-9a-f]+$/.exec(f);
      if (!m || !mine(m[1]) || fs.existsSync(`/proc/${m[2]}`)) continue;
      fs.rmSync(path.join(dir, f), { force: true });
      out.push(path.join(dir, f));
    }
  };
  for (const kind of KINDS) for (const name of ctx.store.names(kind)) sweep(ctx.store.dir(kind, name), () => true);
  sweep(ctx.store.memDir, (base) => memFileOwner(base) !== undefined);
  return out;
}

