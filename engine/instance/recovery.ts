// What an interrupted operation leaves on a VM, and how it is finished: a capture marks its parent
// before it pauses it (and each file it moves out of it); when the capturing process dies, `ls`
// shows the parent `paused` and gc (or start) puts the parent back: files moved back or forward,
// QEMU resumed, the mark cleared. An interrupted start is stopped cleanly.
import * as fs from "node:fs";
import type { Ctx } from "../context";
import { messageOf } from "../errors";
import type { OpRecord, VmManifest } from "../state/manifest";
import { isAlive, killQemu } from "../qemu/process";
import { isLive, livePid, selfRef } from "../qemu/find";
import { Qmp } from "../qemu/qmp";
import { vmPaths } from "../qemu/argv";
import { pollUntil } from "../util/poll";

/** A capture's mark on its parent (see beginCapture). */
export interface CaptureMark {
  /**
   * Records, before the rename, that `from` (a parent's file) is about to become `to` (the
   * template's), so an interrupted capture can put it back (no template manifest yet) or finish
   * the move (the template exists). Call it, then rename.
   */
  moving(from: string, to: string): void;
  /** Clears the mark (the parent runs again, or was consumed). Writing the parent's manifest without `op` clears it too. Safe to repeat. */
  end(): void;
}

/**
 * Marks `parent` (whose lock the caller holds) as the source of a capture into `template`, before
 * the capture pauses it: while the calling process lives this changes nothing; once it is gone the
 * parent shows `paused` and gc runs recoverVm on it. Writes the parent's manifest.
 */
export function beginCapture(ctx: Ctx, parent: VmManifest, template: string, source: "frozen" | "running"): CaptureMark {
  const op: OpRecord = { what: "capture", by: selfRef(), since: new Date().toISOString(), template, source, moved: [] };
  const write = (o: OpRecord | undefined) => {
    const cur = ctx.store.findVm(parent.name) ?? parent;
    ctx.store.writeVm({ ...cur, op: o });
  };
  write(op);
  let ended = false;
  return {
    moving(from, to) {
      op.moved = [...(op.moved ?? []), { from, to }];
      write(op);
    },
    end() {
      if (ended) return;
      ended = true;
      const cur = ctx.store.findVm(parent.name);
      if (cur?.op?.what === "capture" && cur.op.by.pid === op.by.pid && cur.op.since === op.since) ctx.store.writeVm({ ...cur, op: undefined });
    },
  };
}

/** Whether `vm` carries an operation whose process is gone (what recoverVm finishes). */
export function interrupted(vm: VmManifest): boolean {
  return vm.op !== undefined && !isLive(vm.op.by);
}

/**
 * Finishes what an interrupted operation left on one VM; the caller holds the VM's lock (gc,
 * start). Returns a line saying what was done, or undefined when nothing was needed:
 * - a start (`starting`) whose process died: its QEMU (found by token) is killed and the VM left
 *   `stopped` (a non-persistent child's delta disk goes, as on stop);
 * - a capture whose process died: the files it moved are moved back when the template has no
 *   manifest, or on to the template when it has one (a frozen parent is then consumed and its
 *   QEMU killed, never resumed: it would write the template's memory); a parent that is still
 *   alive is resumed (a migration in flight cancelled first) and its disk re-read from QEMU (a
 *   running capture may have moved it onto a new overlay); the mark is cleared;
 * - a parent `consumed` by a template that was never written (the capture died between the
 *   parent's manifest and the template's) and still holding its own disk: given back, `stopped`;
 * - a running parent whose QEMU is paused although no operation holds it (`checkPaused`): resumed.
 * Throws QMP or QEMU when QEMU cannot be resumed or killed.
 */
export async function recoverVm(ctx: Ctx, vm: VmManifest, opts: { checkPaused?: boolean } = {}): Promise<string | undefined> {
  const { store } = ctx;
  const unmade = unmadeTemplateOf(ctx, vm);
  if (unmade) {
    store.writeVm({ ...vm, state: "stopped", pid: undefined, op: undefined, templates: vm.templates?.slice(0, -1) });
    return `gave ${vm.name} back: its capture into template ${unmade} was interrupted before the template existed; it is stopped with its own disk (start it again)`;
  }
  if (vm.state === "starting" && interrupted(vm)) {
    await killQemu(livePid(vm.pid, vm.token), vm.token, 1000);
    if (vm.role === "child" && !vm.persistent && vm.diskPath) fs.rmSync(vm.diskPath, { force: true });
    store.writeVm({ ...vm, state: "stopped", pid: undefined, op: undefined });
    return `stopped ${vm.name}: its start was interrupted`;
  }
  if (vm.op?.what === "capture" && interrupted(vm)) {
    const t = vm.op.template ? safe(() => store.findTemplate(vm.op!.template!)) : undefined;
    const moved = vm.op.moved ?? [];
    if (t && vm.op.source === "frozen") {
      // The template exists: it owns the parent's memory and disk now. Finish the move; the parent stays consumed.
      for (const m of moved) if (fs.existsSync(m.from) && !fs.existsSync(m.to)) fs.renameSync(m.from, m.to);
      await killQemu(vm.pid, vm.token, 1000);
      store.writeVm({ ...vm, state: "consumed", pid: undefined, diskPath: t.diskPath, templates: [...new Set([...(vm.templates ?? []), t.name])], op: undefined });
      return `finished the capture of ${vm.name} into template ${t.name}: ${vm.name} is consumed`;
    }
    for (const m of [...moved].reverse()) if (fs.existsSync(m.to) && !fs.existsSync(m.from)) fs.renameSync(m.to, m.from);
    let what = `${vm.name}: its capture into ${vm.op.template ?? "a template"} was interrupted`;
    let cur: VmManifest = { ...vm, op: undefined };
    if (isAlive(vm.pid, vm.token)) {
      cur = await resume(ctx, cur);
      what = `resumed ${what}`;
    } else {
      what = `${what} after its QEMU ended (${moved.length ? "its files are back; " : ""}start it again)`;
    }
    store.writeVm(cur);
    return what;
  }
  if (opts.checkPaused && vm.state === "running" && !vm.op && isAlive(vm.pid, vm.token) && (vm.role === "parent" || vm.templates?.length)) {
    const status = await queryStatus(store.dir("vms", vm.name), vm);
    if (status && PAUSED.includes(status)) {
      store.writeVm(await resume(ctx, vm));
      return `resumed ${vm.name}: it was left ${status} by an interrupted operation`;
    }
  }
  return undefined;
}

/**
 * The template a `consumed` VM was consumed by, when that template never came to be: its directory
 * holds no manifest and the process that reserved it is gone, while the VM still has its own disk
 * (or none): nothing shares the VM's files, so it can be given back.
 */
export function unmadeTemplateOf(ctx: Ctx, vm: VmManifest): string | undefined {
  const name = vm.templates?.at(-1);
  if (vm.state !== "consumed" || !name) return undefined;
  const h = safe(() => ctx.store.probe("templates", name));
  if (h?.health !== "reserved" || !h.by || isLive(h.by)) return undefined;
  const own = !vm.diskPath || (vm.diskPath.startsWith(ctx.store.dir("vms", vm.name) + "/") && fs.existsSync(vm.diskPath));
  return own ? name : undefined;
}

/** QEMU run states in which a VM forkvm counts as running is not running. */
const PAUSED = ["paused", "postmigrate", "finish-migrate", "inmigrate", "prelaunch"];

function safe<T>(fn: () => T): T | undefined {
  try {
    return fn();
  } catch {
    return undefined;
  }
}

async function queryStatus(dir: string, vm: VmManifest): Promise<string | undefined> {
  const qmp = await Qmp.connect(vmPaths(dir).qmp, 2000, () => isAlive(vm.pid, vm.token)).catch(() => undefined);
  if (!qmp) return undefined;
  try {
    return (await qmp.execute<{ status: string }>("query-status", undefined, 2000)).status;
  } catch {
    return undefined;
  } finally {
    qmp.close();
  }
}

/**
 * Resumes a VM's QEMU: cancels a migration still in flight, `cont` unless it already runs, and
 * returns the manifest with the disk QEMU really writes (a capture may have moved it onto a new
 * overlay in the VM's directory). Throws QMP.
 */
async function resume(ctx: Ctx, vm: VmManifest): Promise<VmManifest> {
  const dir = ctx.store.dir("vms", vm.name);
  const qmp = await Qmp.connect(vmPaths(dir).qmp, 5000, () => isAlive(vm.pid, vm.token));
  try {
    const mig = await qmp.execute<{ status?: string }>("query-migrate", undefined, 2000).catch(() => ({ status: undefined }));
    if (mig.status && ["setup", "active", "pre-switchover", "device", "wait-unplug"].includes(mig.status)) {
      await qmp.execute("migrate_cancel").catch(() => undefined);
      await pollUntil(async () => {
        const s = await qmp.execute<{ status?: string }>("query-migrate");
        return s.status && !["setup", "active", "pre-switchover", "device", "wait-unplug", "cancelling"].includes(s.status) ? true : undefined;
      }, { what: `cancel the migration of ${vm.name}`, deadlineMs: 10_000, intervalMs: 20 });
    }
    const st = await qmp.execute<{ status: string; running: boolean }>("query-status");
    if (!st.running) await qmp.execute("cont");
    const disk = await diskOf(qmp).catch((err) => { ctx.log.log("warn", `cannot read the disk of ${vm.name} from QEMU: ${messageOf(err)}`, { vm: vm.name }); return undefined; });
    return disk && vm.diskPath && disk !== vm.diskPath && disk.startsWith(dir + "/") ? { ...vm, diskPath: disk } : vm;
  } finally {
    qmp.close();
  }
}

/** The top file of the VM's data disk (drive disk0) as QEMU has it now. */
async function diskOf(qmp: Qmp): Promise<string | undefined> {
  const blocks = await qmp.execute<Array<{ device?: string; inserted?: { file?: string } }>>("query-block", undefined, 2000);
  return blocks.find((b) => b.device === "disk0")?.inserted?.file;
}
