// One forked instance of a template for a VM (new, reset or restarted): a fresh delta disk, QEMU
// waiting for the checkpoint, load, cont, then a new identity in this order: hostname, MAC, clock,
// RNG reseed, machine-id (vmgenid also reseeds the kernel), then the VM's metadata (settle).
import * as fs from "node:fs";
import * as path from "node:path";
import { randomBytes } from "node:crypto";
import type { Ctx } from "../context";
import { ForkvmError, messageOf } from "../errors";
import type { TemplateManifest, VmManifest } from "../state/manifest";
import { copyDisk, createDisk, isAlive, killQemu } from "../qemu/process";
import { livePid } from "../qemu/find";
import { waitStatus } from "../qemu/wait";
import { vmPaths } from "../qemu/argv";
import { grantQemu } from "../qemu/run-as";
import { run } from "../util/run";
import { fault } from "../util/fault";
import type { Undo } from "../undo";
import { newToken } from "./identity";
import { agentFor, qemuFailure, startInstance } from "./launch";
import { overlayPrototypePath } from "./template-files";
import { settle } from "./boot";
import { sendCheckpoint } from "./checkpoint-io";

/**
 * A child's TCG translation buffer (MiB). QEMU 7.2 reserves 1 GiB and keeps every block it ever
 * translated, so a long-lived child's private memory only grows; 32 MiB (QEMU's default before
 * 5.2) bounds it. A child's fork and identity step translate ~12 MiB, so forks never flush.
 */
export const CHILD_TB_SIZE_MIB = 32;

/** Creates the agent FIFOs of many VM directories with one mkfifo process (~8 ms instead of 17 ms each). */
export async function createFifos(dirs: string[]): Promise<void> {
  const paths = dirs.flatMap((d) => [`${d}/agent.in`, `${d}/agent.out`]).filter((p) => !fs.existsSync(p));
  if (paths.length) await run("mkfifo", ["-m", "600", ...paths], { what: "create agent FIFOs" });
}

/** Where a child's delta disk lives: its directory (persistent) or tmpfs (discarded on stop). */
export function childDiskPath(ctx: Ctx, name: string, persistent: boolean): string {
  return persistent ? path.join(ctx.store.dir("vms", name), "disk.qcow2") : ctx.store.memFile("vms", name, "qcow2");
}

/**
 * Starts one forked instance of `t` for `vm` (new or existing: reset and start use it too):
 * a fresh delta disk, QEMU waiting for the checkpoint, load, cont, identity.
 * Updates vm.pid, vm.token, vm.timings and the manifest; the manifest holds the new token before
 * QEMU is spawned (so a crash at any point leaves a QEMU gc can find), then its pid; `vm.state` is
 * the caller's (`creating`, `starting`). `state` is the checkpoint if the caller has already read
 * and checked it. Throws NOT_FOUND (the template's memory image is gone), QEMU, MIGRATION, AGENT.
 */
export async function forkInto(ctx: Ctx, t: TemplateManifest, vm: VmManifest, readyDeadlineMs: number, undo: Undo, state?: Buffer): Promise<void> {
  const dir = ctx.store.dir("vms", vm.name);
  const t0 = process.hrtime.bigint();
  const ms = () => Math.round(Number(process.hrtime.bigint() - t0) / 1e4) / 100;
  const full = vm.clone === "full";
  const runAs = ctx.store.qemuUser(); // QEMU drops root to this user (qemu/run-as.ts), or stays as forkvm
  grantQemu(runAs, dir, "dir"); // also a VM made before QEMU dropped root (its directory 0700)
  if (vm.diskPath) {
    fs.rmSync(vm.diskPath, { force: true });
    const proto = overlayPrototypePath(t);
    if (full) await copyDisk(t.diskPath!, vm.diskPath);
    // EXCL: never written through a link someone put at the path.
    else if (fs.existsSync(proto)) fs.copyFileSync(proto, vm.diskPath, fs.constants.COPYFILE_EXCL);
    else await createDisk(vm.diskPath, { backing: t.diskPath });
    // QEMU reopens a forked child's disk read-write at `cont`, after it dropped root (qemu/run-as.ts).
    grantQemu(runAs, vm.diskPath, "rw");
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
    fs.rmSync(mem, { force: true });
    fs.copyFileSync(t.memoryPath, mem, fs.constants.COPYFILE_EXCL);
    fs.chmodSync(mem, 0o600);
  }
  const copyMs = ms();
  // QEMU would create a missing memory file (an empty one: a guest that crashes at once).
  if (!fs.existsSync(vm.memoryPath)) throw new ForkvmError("NOT_FOUND", `Cannot fork ${vm.name} from template ${t.name}: its memory image ${vm.memoryPath} is gone`, { details: { file: vm.memoryPath } });
  const token = newToken();
  Object.assign(vm, { token, pid: undefined, shape: t.shape, template: { name: t.name, generation: t.generation }, startedBy: "fork" });
  // Recorded before it is spawned: whatever happens next, gc finds this QEMU by its token.
  ctx.store.writeVm(vm);
  fault("fork:recorded");
  let spawned: number | undefined;
  undo.push("kill QEMU", () => killQemu(spawned ?? livePid(undefined, token), token, 500));
  const { pid, qmp } = await startInstance(t.shape, {
    token, dir, memory: { path: vm.memoryPath, share: full }, diskPath: vm.diskPath, mac: vm.mac, forwards: vm.forwards, egress: vm.egress ?? "nat", incoming: true,
    tbSizeMiB: CHILD_TB_SIZE_MIB, limits: vm.limits, runAs,
  });
  spawned = pid;
  vm.pid = pid;
  ctx.store.writeVm(vm);
  fault("fork:spawned");
  const spawnMs = ms();
  const sock = vmPaths(dir).incoming;
  let loadedMs = 0;
  try {
    await qmp.execute("migrate-set-capabilities", { capabilities: [{ capability: "x-ignore-shared", state: true }] });
    // No self-announce after the load: QEMU would make the guest broadcast its *template's* MAC
    // five times over ~1 s (config interrupts, ARP, NA, MLD: ~15 ms of host CPU per child). The
    // child announces its own new MAC when the identity step sets it.
    await qmp.execute("migrate-set-parameters", { "announce-rounds": 0 });
    // The checkpoint goes from here into QEMU's socket: no `exec:cat` (a shell and a cat forked
    // off QEMU's large address space), ~10 ms less per child. An unprivileged QEMU (runAs) listens
    // there since it started: it bound the socket as root.
    if (!runAs) {
      fs.rmSync(sock, { force: true });
      await qmp.execute("migrate-incoming", { uri: `unix:${sock}` });
    }
    const sent = sendCheckpoint(sock, state ?? fs.readFileSync(t.statePath));
    sent.catch(() => undefined); // QEMU's own failure (below) says more; the send is awaited after
    await waitStatus(qmp, ["paused", "running"], 30_000, () => isAlive(pid, token), `load the checkpoint into ${vm.name}`);
    await sent;
    loadedMs = ms();
    await qmp.execute("cont");
    fault("fork:running");
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
    await settle(ctx, vm, agent, readyDeadlineMs);
  } catch (err) {
    throw new ForkvmError(err instanceof ForkvmError ? err.code : "AGENT", `Cannot give ${vm.name} its identity: ${messageOf(err)}`, { cause: err });
  } finally {
    agent.close();
  }
  vm.timings = { diskMs, ...(full ? { copyMs } : {}), spawnMs, loadedMs, runningMs, readyMs: ms() };
}
