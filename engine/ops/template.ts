// Freeze a parent into a powered-on template: memory image + device checkpoint + base disk,
// immutable files that no longer depend on the parent process. Two source modes:
//   frozen  — stop, save the device state (RAM stays in the shared memory file), the parent is consumed;
//   running — live-migrate to a stream (the source pauses a few ms), snapshot its disk onto a fresh
//             overlay, resume it; a paused builder QEMU turns the stream into a normal template.
import * as fs from "node:fs";
import * as path from "node:path";
import { randomBytes } from "node:crypto";
import type { z } from "zod";
import type { Ctx } from "../context";
import type { TemplateManifest, VmManifest } from "../state/manifest";
import { transition } from "../state/transitions";
import { TemplateArgs, parseArgs } from "../spec";
import { createDisk, isAlive, killQemu } from "../qemu/process";
import { Qmp } from "../qemu/qmp";
import { vmPaths } from "../qemu/argv";
import { waitMigration, waitStatus } from "../qemu/wait";
import { Undo } from "../undo";
import { sha256 } from "../util/hash";
import { ensureOverlayPrototype } from "../instance/template-files";
import { newToken } from "../instance/identity";
import { qemuFailure, quitInstance, requireAlive, startInstance } from "../instance/launch";

export { TemplateArgs };

function sha256File(file: string): string {
  return sha256(fs.readFileSync(file));
}

function newGeneration(): string {
  return `g${Date.now().toString(36)}${randomBytes(3).toString("hex")}`;
}

/** Saves the device state of a paused VM whose RAM is in a shared file (x-ignore-shared). */
async function saveCheckpoint(qmp: Qmp, statePath: string, what: string): Promise<void> {
  await qmp.execute("migrate-set-capabilities", { capabilities: [{ capability: "x-ignore-shared", state: true }] });
  await qmp.execute("migrate", { uri: `exec:cat > '${statePath.replace(/'/g, "'\\''")}'` });
  await waitMigration(qmp, 60_000, what);
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

function makeReadOnly(file: string | undefined): void {
  if (file) fs.chmodSync(file, 0o444);
}

/**
 * Creates a template from a running parent. Throws INVALID_ARGUMENT, NOT_FOUND (parent),
 * ALREADY_EXISTS, CONFLICT (parent not running), MIGRATION, QMP, QEMU or TIMEOUT; on failure the
 * parent is resumed and nothing of the template is left.
 */
export async function createTemplate(ctx: Ctx, input: TemplateArgs): Promise<TemplateManifest> {
  const args = parseArgs(TemplateArgs, input, "create template");
  const { store } = ctx;
  return store.withLock("vms", args.parent, async () => {
    const parent = store.getVm(args.parent);
    transition(parent, args.source === "frozen" ? "capture-frozen" : "capture-running");
    requireAlive(parent);
    const dir = store.reserve("templates", args.name);
    const quiesce = args.quiesceTimeoutMs > 0 ? await waitQuiet(parent.pid!, args.quiesceTimeoutMs) : { waitedMs: 0, quiet: false };
    if (args.quiesceTimeoutMs > 0 && !quiesce.quiet) ctx.log.log("warn", `parent ${parent.name} is still busy after ${quiesce.waitedMs} ms; its children will finish that work after their fork`, { vm: parent.name });
    const undo = new Undo(ctx.log);
    undo.push("remove template directory", () => store.remove("templates", args.name));
    try {
      const t = args.source === "frozen" ? await freeze(ctx, parent, args.name, dir, undo) : await liveCapture(ctx, parent, args, dir, undo);
      t.timings.quiesceMs = quiesce.waitedMs;
      makeReadOnly(t.memoryPath);
      makeReadOnly(t.statePath);
      makeReadOnly(t.diskPath);
      await ensureOverlayPrototype(t); // children's delta disks are copies of it
      store.writeTemplate(t);
      undo.commit();
      ctx.log.log("info", "template created", { template: t.name, generation: t.generation, ...t.timings });
      return t;
    } catch (err) {
      await undo.run();
      throw err;
    }
  });
}

/**
 * The template keeps its own kernel and initrd (hard links, or copies across filesystems): its
 * children start QEMU with them, and persistent children cold-boot them, long after the image
 * cache they came from was rebuilt or removed.
 */
function keepBootFiles(parent: VmManifest, dir: string): VmManifest["shape"] {
  const keep = (from: string, base: string) => {
    const to = path.join(dir, base);
    try { fs.linkSync(from, to); } catch { fs.copyFileSync(from, to); }
    fs.chmodSync(to, 0o444);
    return to;
  };
  return { ...parent.shape, kernel: keep(parent.shape.kernel, "kernel"), initrd: keep(parent.shape.initrd, "initrd") };
}

function templateOf(parent: VmManifest, name: string, dir: string, source: "frozen" | "running", memoryPath: string, diskPath: string | undefined, timings: Record<string, number>): TemplateManifest {
  const statePath = path.join(dir, "state.bin");
  return {
    version: 1, kind: "template", name, generation: newGeneration(), createdAt: new Date().toISOString(), source,
    parent: parent.name, shape: keepBootFiles(parent, dir), memoryPath, statePath, stateBytes: fs.statSync(statePath).size,
    stateSha256: sha256File(statePath), diskPath, parentMac: parent.mac, parentHostname: parent.hostname, timings,
  };
}

/** frozen: the parent's memory file and disk become the template's; the parent is consumed. */
async function freeze(ctx: Ctx, parent: VmManifest, name: string, dir: string, undo: Undo): Promise<TemplateManifest> {
  const { store } = ctx;
  const pdir = store.dir("vms", parent.name);
  const qmp = await Qmp.connect(vmPaths(pdir).qmp, 5000, () => isAlive(parent.pid, parent.token));
  const statePath = path.join(dir, "state.bin");
  const t0 = Date.now();
  try {
    await qmp.execute("stop");
    undo.push("resume the parent", () => qmp.execute("cont").catch(() => undefined));
    await saveCheckpoint(qmp, statePath, `save the checkpoint of ${parent.name}`);
  } catch (err) {
    await undo.run();
    qmp.close();
    throw err;
  }
  const freezeMs = Date.now() - t0;
  // From here the parent is consumed: it must never run again, or it would write the template's memory.
  await quitInstance(qmp, parent.pid, parent.token);
  const memoryPath = store.memoryPath("templates", name);
  fs.renameSync(parent.memoryPath, memoryPath);
  let diskPath: string | undefined;
  if (parent.diskPath) {
    diskPath = path.join(dir, "disk.qcow2");
    fs.renameSync(parent.diskPath, diskPath);
  }
  const t = templateOf(parent, name, dir, "frozen", memoryPath, diskPath, { freezeMs, downtimeMs: freezeMs });
  store.writeVm({ ...parent, state: "consumed", pid: undefined, diskPath, templates: [...(parent.templates ?? []), name] });
  return t;
}

/** running: live migration to a stream, disk snapshot and resume in the pause, then a builder. */
async function liveCapture(ctx: Ctx, parent: VmManifest, args: z.infer<typeof TemplateArgs>, dir: string, undo: Undo): Promise<TemplateManifest> {
  const { store } = ctx;
  const pdir = store.dir("vms", parent.name);
  const stream = path.join(store.memDir, `templates-${args.name}.stream`);
  undo.push("remove the migration stream", () => fs.rmSync(stream, { force: true }));
  const qmp = await Qmp.connect(vmPaths(pdir).qmp, 5000, () => isAlive(parent.pid, parent.token));
  let newDisk: string | undefined;
  let diskPath: string | undefined;
  const t0 = Date.now();
  let mig: Awaited<ReturnType<typeof waitMigration>>;
  try {
    ctx.progress?.({ step: "migrate", message: `live-capturing ${parent.name}` });
    await qmp.execute("migrate-set-capabilities", { capabilities: [{ capability: "x-ignore-shared", state: false }] });
    await qmp.execute("migrate-set-parameters", { "downtime-limit": args.downtimeLimitMs });
    await qmp.execute("migrate", { uri: `exec:cat > '${stream.replace(/'/g, "'\\''")}'` });
    try {
      mig = await waitMigration(qmp, 300_000, `live-capture ${parent.name}`);
    } catch (err) {
      await qmp.execute("migrate_cancel").catch(() => undefined);
      throw err;
    }
    // The source is paused (postmigrate). Its disk now becomes the template's base: snapshot it
    // onto a fresh overlay so the source's later writes never reach the template.
    if (parent.diskPath) {
      newDisk = path.join(pdir, `disk-${Date.now().toString(36)}.qcow2`);
      await qmp.execute("blockdev-snapshot-sync", { device: "disk0", "snapshot-file": newDisk, format: "qcow2" });
      diskPath = path.join(dir, "disk.qcow2");
      fs.linkSync(parent.diskPath, diskPath); // the template keeps the base even when the parent is deleted
    }
    await qmp.execute("cont");
  } catch (err) {
    await qmp.execute("cont").catch(() => undefined);
    qmp.close();
    throw err;
  }
  const stop = qmp.events.find((e) => e.event === "STOP");
  const resume = [...qmp.events].reverse().find((e) => e.event === "RESUME");
  const downtimeMs = stop && resume ? resume.atMs - stop.atMs : undefined;
  qmp.close();
  const captureMs = Date.now() - t0;
  store.writeVm({ ...parent, diskPath: newDisk ?? parent.diskPath, templates: [...(parent.templates ?? []), args.name] });

  // The builder: paused, incoming, on the template's new memory file (shared), loads the stream,
  // then saves the device state with x-ignore-shared exactly like a frozen template.
  const b0 = Date.now();
  const memoryPath = store.memoryPath("templates", args.name);
  undo.push("remove template memory", () => fs.rmSync(memoryPath, { force: true }));
  const bdir = path.join(dir, "builder");
  fs.mkdirSync(bdir);
  const scratch = path.join(bdir, "scratch.qcow2");
  if (diskPath) await createDisk(scratch, { backing: diskPath });
  const token = newToken();
  const { pid, qmp: bq } = await startInstance(parent.shape, {
    token, dir: bdir, memory: { path: memoryPath, share: true }, diskPath: diskPath ? scratch : undefined,
    mac: parent.mac, forwards: [], incoming: true, paused: true,
  });
  undo.push("kill the builder", () => killQemu(pid, token, 500));
  try {
    await bq.execute("migrate-incoming", { uri: `exec:cat '${stream.replace(/'/g, "'\\''")}'` });
    await waitStatus(bq, ["paused"], 120_000, () => isAlive(pid, token), "load the live capture into the builder");
    await saveCheckpoint(bq, path.join(dir, "state.bin"), "save the template checkpoint from the builder");
  } catch (err) {
    throw qemuFailure(bdir, `build template ${args.name}`, err);
  } finally {
    await quitInstance(bq, pid, token);
  }
  fs.rmSync(bdir, { recursive: true, force: true });
  fs.rmSync(stream, { force: true });
  return templateOf(parent, args.name, dir, "running", memoryPath, diskPath, {
    freezeMs: Date.now() - t0, captureMs, buildMs: Date.now() - b0,
    ...(downtimeMs !== undefined ? { downtimeMs: Math.round(downtimeMs * 100) / 100 } : {}),
    ...(mig.downtimeMs !== undefined ? { qemuDowntimeMs: mig.downtimeMs } : {}),
    ...(mig.bytes !== undefined ? { streamBytes: mig.bytes } : {}),
  });
}
