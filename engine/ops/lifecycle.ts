// A VM's life after creation: status reconciled with its process, stop/start/reset, exec,
// removal (idempotent; a template with children is kept unless forced) and garbage collection.
import * as fs from "node:fs";
import * as path from "node:path";
import { ForkvmError, messageOf } from "../errors";
import type { Ctx } from "../context";
import type { PoolManifest, TemplateManifest, VmManifest } from "../state/manifest";
import { KINDS } from "../state/store";
import { statusOf, transition, type VmStatus } from "../state/transitions";
import { isAlive, killQemu } from "../qemu/process";
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
  return { ...vm, status: statusOf(vm) };
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
    const vm = store.getVm(name);
    const to = transition(vm, "stop");
    const dir = store.dir("vms", name);
    const keepsDisk = vm.role === "parent" || vm.persistent === true;
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
    const stopped: VmManifest = { ...vm, state: to, pid: undefined };
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
    const vm = store.getVm(name);
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

/** Starts a new instance of `vm` with `launch`; a failure is undone and leaves the VM `stopped`. */
async function relaunch(ctx: Ctx, vm: VmManifest, launch: (undo: Undo) => Promise<void>): Promise<VmInfo> {
  const undo = new Undo(ctx.log);
  try {
    await launch(undo);
  } catch (err) {
    await undo.run();
    ctx.store.writeVm({ ...vm, state: "stopped", pid: undefined });
    throw err;
  }
  vm.state = "running";
  ctx.store.writeVm(vm);
  return info(vm);
}

/**
 * Returns a non-persistent child to the template's state, in place: same name, MAC and
 * hostname, a fresh delta disk and memory. Throws CONFLICT for parents and persistent children.
 */
export async function resetVm(ctx: Ctx, name: string, deadlineMs = 60_000): Promise<VmInfo> {
  const { store } = ctx;
  return store.withLock("vms", name, async () => {
    const vm = store.getVm(name);
    transition(vm, "reset");
    const t = wholeTemplateOf(ctx, vm); // before the running instance is killed
    await killQemu(vm.pid, vm.token, 500);
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

function removeVmNow(ctx: Ctx, vm: VmManifest): Promise<void> {
  return (async () => {
    await killQemu(vm.pid, vm.token, 1000);
    if (vm.diskPath?.startsWith(ctx.store.memDir)) fs.rmSync(vm.diskPath, { force: true });
    ctx.store.remove("vms", vm.name);
  })();
}

/**
 * Removes VMs and templates by name; a name that is not there is reported as `absent` (so it is
 * safe to repeat). A template that still has children throws HAS_CHILDREN naming them, unless
 * `force`, which removes the children first.
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
        for (const k of kids) await store.withLock("vms", k.name, () => removeVmNow(ctx, k));
        const t = (() => { try { return store.findTemplate(name); } catch { return undefined; } })();
        if (t) fs.rmSync(t.memoryPath, { force: true });
        store.remove("templates", name);
        return { name, kind: "template" as const, removed: [...kids.map((k) => k.name), name] };
      }));
    } else if (store.exists("vms", name)) {
      out.push(await store.withLock("vms", name, async () => {
        const vm = (() => { try { return store.findVm(name); } catch { return undefined; } })();
        if (vm) await removeVmNow(ctx, vm);
        else store.remove("vms", name);
        return { name, kind: "vm" as const, removed: [name] };
      }));
    } else {
      out.push({ name, kind: "absent", removed: [] });
    }
  }
  return out;
}

/**
 * Removes what no manifest accounts for: directories whose manifest never got written (a create
 * that crashed), `creating` VMs whose process is gone, memory files and delta disks nobody
 * refers to. Only objects older than `minAgeMs` are touched, so creates in flight are safe.
 */
export async function gc(ctx: Ctx, minAgeMs = 60_000): Promise<string[]> {
  const { store } = ctx;
  const removed: string[] = [];
  const old = (p: string) => { try { return Date.now() - fs.statSync(p).mtimeMs > minAgeMs; } catch { return false; } };
  for (const kind of KINDS) {
    for (const name of store.names(kind)) {
      const dir = store.dir(kind, name);
      let valid: VmManifest | TemplateManifest | PoolManifest | undefined;
      try { valid = kind === "vms" ? store.findVm(name) : kind === "templates" ? store.findTemplate(name) : store.findPool(name); } catch { valid = undefined; }
      const abandoned = !valid || (valid.kind === "vm" && valid.state === "creating" && !isAlive(valid.pid, valid.token));
      if (abandoned && old(dir) && !store.isLocked(kind, name)) {
        if (valid?.kind === "vm") await killQemu(valid.pid, valid.token, 500);
        store.remove(kind, name);
        removed.push(`${kind}/${name}`);
      }
    }
  }
  const referenced = new Set<string>();
  for (const v of store.listVms()) { referenced.add(v.memoryPath); if (v.diskPath) referenced.add(v.diskPath); }
  for (const t of store.listTemplates()) referenced.add(t.memoryPath);
  let files: string[] = [];
  try { files = fs.readdirSync(store.memDir); } catch { /* no memdir yet */ }
  for (const f of files) {
    const p = path.join(store.memDir, f);
    if (!referenced.has(p) && old(p)) {
      fs.rmSync(p, { force: true });
      removed.push(p);
    }
  }
  return removed;
}
