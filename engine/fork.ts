// Children from a template: memory MAP_PRIVATE on the template's memory file (copy-on-write),
// a qcow2 delta disk each, device state from the checkpoint, then a new identity in this order:
// load → cont → hostname, MAC, clock, RNG reseed, machine-id (vmgenid also reseeds the kernel).
import * as fs from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import { createHash, randomBytes } from "node:crypto";
import { z } from "zod";
import { ForkvmError, messageOf } from "./errors";
import type { Ctx } from "./context";
import { Name, type TemplateManifest, type VmManifest } from "./manifest";
import { copyDisk, createDisk, isAlive, killQemu, run } from "./qemu/process";
import { parseArgs } from "./validate";
import { ForwardSpec, resolveForwards } from "./parent";
import { Undo } from "./undo";
import { METADATA_KEY_RE, writeMetadata } from "./metadata";
import { agentFor, hostnameFor, MAC_PREFIX_RE, newToken, qemuFailure, randomMac, startInstance, waitStatus } from "./vm";

export const ForkArgs = z.object({
  template: Name,
  count: z.number().int().min(1).max(10_000).default(1),
  /** Children are named <prefix>-<n> with the lowest free n; default: the template's name. */
  prefix: Name.optional(),
  /** Exact names instead of prefix-numbering (count is then names.length). */
  names: z.array(Name).optional(),
  /** Hostnames, one per name (default: the name). */
  hostnames: z.array(z.string().regex(/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/, "a DNS label: lower-case letters, digits and '-', 1 to 63 characters")).optional(),
  /** MACs, one per name (e.g. to keep a child's MAC across a re-fork); default: random under macPrefix. */
  macs: z.array(z.string().regex(/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/, "six lower-case hex octets separated by ':'")).optional(),
  persistent: z.boolean().default(false),
  /** linked: memory copy-on-write and a delta disk on the template (instant clone);
   *  full: a private copy of the memory image and an independent disk (no dependency on the template). */
  clone: z.enum(["linked", "full"]).default("linked"),
  macPrefix: z.string().regex(MAC_PREFIX_RE, "1 to 5 hex octets separated by ':', e.g. 52:54:00").optional(),
  forwards: z.array(ForwardSpec).default([]),
  /** How many children are forked at once. */
  concurrency: z.number().int().min(1).max(256).default(4),
  /** Handed to each child as /etc/forkvm/metadata.json and /etc/forkvm/metadata (KEY='value'). */
  metadata: z.record(z.string().regex(METADATA_KEY_RE, "letters, digits and _, not starting with a digit"), z.string()).optional(),
  readyTimeoutS: z.number().int().min(1).max(3600).default(60),
}).strict();
export type ForkArgs = z.input<typeof ForkArgs>;

export interface ForkResult {
  children: VmManifest[];
  failed: Array<{ name: string; error: ForkvmError }>;
}

/**
 * Reads the template and checks its files are whole (memory size, checkpoint checksum).
 * Returns the checkpoint it checked: children load exactly these bytes.
 */
export function checkTemplate(t: TemplateManifest): Buffer {
  const mem = fs.statSync(t.memoryPath, { throwIfNoEntry: false });
  if (!mem || mem.size < t.shape.memoryMiB * 1048576) {
    throw new ForkvmError("STATE", `Cannot fork template ${t.name}: memory image ${t.memoryPath} is ${mem ? "truncated" : "missing"}`);
  }
  const state = fs.readFileSync(t.statePath);
  if (createHash("sha256").update(state).digest("hex") !== t.stateSha256) {
    throw new ForkvmError("STATE", `Cannot fork template ${t.name}: checkpoint ${t.statePath} does not match its checksum`);
  }
  if (t.diskPath && !fs.existsSync(t.diskPath)) throw new ForkvmError("STATE", `Cannot fork template ${t.name}: base disk ${t.diskPath} is missing`);
  return state;
}

/**
 * A child's TCG translation buffer (MiB). QEMU 7.2 reserves 1 GiB and keeps every block it ever
 * translated, so a long-lived child's private memory only grows; 32 MiB (QEMU's default before
 * 5.2) bounds it. A child's fork and identity step translate ~12 MiB, so forks never flush.
 */
export const CHILD_TB_SIZE_MIB = 32;

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

/** Creates the agent FIFOs of many VM directories with one mkfifo process (~8 ms instead of 17 ms each). */
async function createFifos(dirs: string[]): Promise<void> {
  const paths = dirs.flatMap((d) => [`${d}/agent.in`, `${d}/agent.out`]).filter((p) => !fs.existsSync(p));
  if (paths.length) await run("mkfifo", ["-m", "600", ...paths], { what: "create agent FIFOs" });
}

/** Where a child's delta disk lives: its directory (persistent) or tmpfs (discarded on stop). */
export function childDiskPath(ctx: Ctx, name: string, persistent: boolean): string {
  return persistent ? path.join(ctx.store.dir("vms", name), "disk.qcow2") : path.join(ctx.store.memDir, `vms-${name}.qcow2`);
}

/**
 * Forks `count` children. Each child that fails is cleaned up and reported in `failed`;
 * the others keep running. Throws INVALID_ARGUMENT, NOT_FOUND or STATE before any fork starts.
 */
export async function forkChildren(ctx: Ctx, input: ForkArgs): Promise<ForkResult> {
  const args = parseArgs(ForkArgs, input, "fork");
  const { store } = ctx;
  const t = store.getTemplate(args.template);
  const state = checkTemplate(t);
  const total = args.names?.length ?? args.count;
  for (const field of ["hostnames", "macs"] as const) {
    if (args[field] && args[field]!.length !== args.names?.length) {
      throw new ForkvmError("INVALID_ARGUMENT", `Cannot fork: ${field} needs names, one ${field === "macs" ? "MAC" : "hostname"} per name`, { details: { field } });
    }
  }
  // Reserve names and write `creating` manifests under the template's lock, so that a
  // concurrent `rm template` sees these children.
  const planned = await store.withLock("templates", t.name, async () => {
    const names: string[] = [];
    if (args.names) {
      for (const n of args.names) { store.reserve("vms", n); names.push(n); }
    } else {
      const prefix = args.prefix ?? t.name;
      for (let i = 1; names.length < total; i++) {
        const n = `${prefix}-${i}`;
        if (store.exists("vms", n)) continue;
        store.reserve("vms", n);
        names.push(n);
      }
    }
    const vms: VmManifest[] = [];
    for (const [i, name] of names.entries()) {
      const vm: VmManifest = {
        version: 1, kind: "vm", name, role: "child", createdAt: new Date().toISOString(), state: "creating",
        shape: t.shape, token: newToken(), memoryPath: t.memoryPath,
        diskPath: t.diskPath ? childDiskPath(ctx, name, args.persistent) : undefined,
        mac: args.macs?.[i] ?? randomMac(args.macPrefix), hostname: args.hostnames?.[i] ?? hostnameFor(name), forwards: await resolveForwards(args.forwards),
        template: { name: t.name, generation: t.generation }, persistent: args.persistent, clone: args.clone, startedBy: "fork",
        metadata: args.metadata, timings: {},
      };
      store.writeVm(vm);
      vms.push(vm);
    }
    return vms;
  });

  if (args.clone === "linked" && !args.persistent) await ensureOverlayPrototype(t);
  await createFifos(planned.map((vm) => store.dir("vms", vm.name))).catch((err) => ctx.log.log("warn", `${messageOf(err)}; each child makes its own`));
  const result: ForkResult = { children: [], failed: [] };
  let next = 0;
  const worker = async () => {
    while (next < planned.length) {
      const vm = planned[next++];
      const undo = new Undo(ctx.log);
      undo.push("remove VM", () => store.remove("vms", vm.name));
      try {
        await forkInto(ctx, t, vm, args.readyTimeoutS * 1000, undo, state);
        vm.state = "running";
        store.writeVm(vm);
        undo.commit();
        result.children.push(vm);
      } catch (err) {
        await undo.run();
        const error = err instanceof ForkvmError ? err : new ForkvmError("QEMU", `Cannot fork ${vm.name}: ${messageOf(err)}`, { cause: err });
        result.failed.push({ name: vm.name, error });
        ctx.log.log("error", error.message, { vm: vm.name });
      }
      ctx.progress?.({ step: "fork", message: vm.name, done: result.children.length + result.failed.length, total: planned.length });
    }
  };
  await Promise.all(Array.from({ length: Math.min(args.concurrency, planned.length) }, worker));
  result.children.sort((a, b) => a.name.localeCompare(b.name, undefined, { numeric: true }));
  return result;
}

/**
 * Starts one forked instance of `t` for `vm` (new or existing: reset and start use it too):
 * a fresh delta disk, QEMU waiting for the checkpoint, load, cont, identity.
 * Updates vm.pid, vm.token, vm.timings and the manifest. `state` is the checkpoint if the caller
 * has already read and checked it.
 */
export async function forkInto(ctx: Ctx, t: TemplateManifest, vm: VmManifest, readyDeadlineMs: number, undo: Undo, state?: Buffer): Promise<void> {
  const dir = ctx.store.dir("vms", vm.name);
  const t0 = process.hrtime.bigint();
  const ms = () => Math.round(Number(process.hrtime.bigint() - t0) / 1e4) / 100;
  const full = vm.clone === "full";
  if (vm.diskPath) {
    fs.rmSync(vm.diskPath, { force: true });
    const proto = overlayPrototypePath(t);
    if (full) await copyDisk(t.diskPath!, vm.diskPath);
    else if (fs.existsSync(proto)) fs.copyFileSync(proto, vm.diskPath);
    else await createDisk(vm.diskPath, { backing: t.diskPath });
    const disk = vm.diskPath;
    if (!vm.persistent) undo.push("remove delta disk", () => fs.rmSync(disk, { force: true }));
  }
  const diskMs = ms();
  vm.memoryPath = t.memoryPath;
  if (full) {
    // A private, writable copy of the memory image, mapped shared like a parent's own memory.
    vm.memoryPath = ctx.store.memoryPath("vms", vm.name);
    const mem = vm.memoryPath;
    undo.push("remove memory copy", () => fs.rmSync(mem, { force: true }));
    fs.copyFileSync(t.memoryPath, mem);
    fs.chmodSync(mem, 0o600);
  }
  const copyMs = ms();
  vm.token = newToken();
  vm.shape = t.shape;
  vm.template = { name: t.name, generation: t.generation };
  vm.startedBy = "fork";
  const token = vm.token;
  const { pid, qmp } = await startInstance(t.shape, {
    token, dir, memory: { path: vm.memoryPath, share: full }, diskPath: vm.diskPath, mac: vm.mac, forwards: vm.forwards, incoming: true,
    tbSizeMiB: CHILD_TB_SIZE_MIB,
  });
  undo.push("kill QEMU", () => killQemu(pid, token, 500));
  vm.pid = pid;
  ctx.store.writeVm(vm);
  const spawnMs = ms();
  const sock = path.join(dir, "migrate.sock");
  let loadedMs = 0;
  try {
    await qmp.execute("migrate-set-capabilities", { capabilities: [{ capability: "x-ignore-shared", state: true }] });
    // No self-announce after the load: QEMU would make the guest broadcast its *template's* MAC
    // five times over ~1 s (config interrupts, ARP, NA, MLD: ~15 ms of host CPU per child). The
    // child announces its own new MAC when the identity step sets it.
    await qmp.execute("migrate-set-parameters", { "announce-rounds": 0 });
    // The checkpoint goes from here into QEMU's socket: no `exec:cat` (a shell and a cat forked
    // off QEMU's large address space), ~10 ms less per child.
    fs.rmSync(sock, { force: true });
    await qmp.execute("migrate-incoming", { uri: `unix:${sock}` });
    const sent = sendCheckpoint(sock, state ?? fs.readFileSync(t.statePath));
    sent.catch(() => undefined); // QEMU's own failure (below) says more; the send is awaited after
    await waitStatus(qmp, ["paused", "running"], 30_000, () => isAlive(pid, token), `load the checkpoint into ${vm.name}`);
    await sent;
    loadedMs = ms();
    await qmp.execute("cont");
  } catch (err) {
    throw qemuFailure(dir, `fork ${vm.name} from template ${t.name}`, err);
  } finally {
    qmp.close();
    fs.rmSync(sock, { force: true });
  }
  const runningMs = ms();
  const agent = agentFor(dir);
  try {
    await agent.identity({
      hostname: vm.hostname, mac: vm.mac, epochSeconds: Date.now() / 1000, seed: randomBytes(64), machineId: randomBytes(16).toString("hex"),
    }, readyDeadlineMs);
    if (vm.metadata && Object.keys(vm.metadata).length) await writeMetadata(agent, vm.metadata, readyDeadlineMs);
  } catch (err) {
    throw new ForkvmError(err instanceof ForkvmError ? err.code : "AGENT", `Cannot give ${vm.name} its identity: ${messageOf(err)}`, { cause: err });
  } finally {
    agent.close();
  }
  vm.timings = { diskMs, ...(full ? { copyMs } : {}), spawnMs, loadedMs, runningMs, readyMs: ms() };
}

/** Writes a checkpoint into QEMU's incoming migration socket and closes it. */
function sendCheckpoint(sock: string, state: Buffer): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const s = net.createConnection(sock, () => s.end(state));
    s.once("error", (err) => reject(new ForkvmError("MIGRATION", `Cannot send the checkpoint to ${sock}: ${err.message}`, { cause: err })));
    s.once("close", (hadError) => { if (!hadError) resolve(); });
  });
}
