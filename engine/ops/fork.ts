// Fork: running children from a template, many at once. Admission (ops/admission.ts) checks the
// host has room, then names and `creating` manifests are reserved under the template's lock (so a
// concurrent `rm` of the template sees them); each child is then forked into its directory
// (instance/fork-into.ts); a child that fails is undone alone, and after maxConsecutiveFailures
// failures in a row the children not yet attempted are released and reported as such.
import type { Ctx } from "../context";
import { ForkvmError, messageOf } from "../errors";
import type { VmManifest } from "../state/manifest";
import type { z } from "zod";
import { ForkArgs, parseArgs, ChildSpec as ChildInput } from "../spec";

type ChildSpec = z.output<typeof ChildInput>;
import { Undo } from "../undo";
import { hostnameFor, newToken, randomMac } from "../instance/identity";
import { childDiskPath, createFifos, forkInto } from "../instance/fork-into";
import { checkTemplate, ensureOverlayPrototype } from "../instance/template-files";
import { createLogPipes } from "../qemu/process";
import { resolveForwards } from "./parent";
import { admitFork } from "./admission";

export { ForkArgs };

export interface ForkResult {
  children: VmManifest[];
  /** Children that failed, and those not attempted (also in `notAttempted`), each with its cause. */
  failed: Array<{ name: string; error: ForkvmError }>;
  /** Children never tried because the fork stopped after too many failures in a row (nothing of them is left). */
  notAttempted: string[];
}

/** What a pool records on the children it forks (not a user input). */
export interface ForkOwner {
  pool: string;
  indexOf: (name: string) => number;
}

/** The children to make: `children` as given, else `names` (+ hostnames, macs), else count × prefix. */
function childSpecs(ctx: Ctx, args: ReturnType<typeof ForkArgs.parse>, prefix: string): ChildSpec[] {
  if (args.children) {
    for (const field of ["names", "hostnames", "macs"] as const) {
      if (args[field]) throw new ForkvmError("INVALID_ARGUMENT", `Cannot fork: give either children or ${field}, not both`, { details: { field } });
    }
    return args.children;
  }
  for (const field of ["hostnames", "macs"] as const) {
    if (args[field] && args[field]!.length !== args.names?.length) {
      throw new ForkvmError("INVALID_ARGUMENT", `Cannot fork: ${field} needs names, one ${field === "macs" ? "MAC" : "hostname"} per name`, { details: { field } });
    }
  }
  if (args.names) return args.names.map((name, i) => ({ name, hostname: args.hostnames?.[i], mac: args.macs?.[i] }));
  const out: ChildSpec[] = [];
  for (let i = 1; out.length < args.count; i++) {
    const name = `${prefix}-${i}`;
    if (!ctx.store.kindOf(name)) out.push({ name });
  }
  return out;
}

/**
 * Forks children. Each child that fails is cleaned up and reported in `failed`; the others keep
 * running. After the host's maxConsecutiveFailures failures in a row no new child is started: the
 * rest are released and reported in `failed` and `notAttempted`. Throws INVALID_ARGUMENT,
 * NOT_FOUND, ALREADY_EXISTS (a name is taken), STATE (the template is not whole) or HOST (the
 * host has no room: memory, tmpfs, disk, its maximum of VMs, cgroups for the limits; named with
 * the figures) before any fork starts.
 */
export async function forkChildren(ctx: Ctx, input: ForkArgs, owner?: ForkOwner): Promise<ForkResult> {
  const args = parseArgs(ForkArgs, input, "fork");
  const { store } = ctx;
  const t = store.getTemplate(args.template);
  const state = checkTemplate(t);
  // Reserve names and write `creating` manifests under the template's lock, so that a
  // concurrent `rm template` sees these children.
  const { planned, settings } = await store.withLock("templates", t.name, async () => {
    const specs = childSpecs(ctx, args, args.prefix ?? t.name);
    // Before anything is reserved: a fork the host has no room for leaves nothing.
    const settings = admitFork(ctx, { template: t, count: specs.length, persistent: args.persistent, clone: args.clone, limits: args.limits });
    const reserved: string[] = [];
    try {
      for (const c of specs) { store.reserve("vms", c.name); reserved.push(c.name); }
      const vms: VmManifest[] = [];
      for (const c of specs) {
        const vm: VmManifest = {
          version: 1, kind: "vm", name: c.name, role: "child", createdAt: new Date().toISOString(), state: "creating",
          shape: t.shape, token: newToken(), memoryPath: t.memoryPath,
          diskPath: t.diskPath ? childDiskPath(ctx, c.name, args.persistent) : undefined,
          mac: c.mac ?? randomMac(args.macPrefix), hostname: c.hostname ?? hostnameFor(c.name),
          forwards: await resolveForwards(c.forwards ?? args.forwards), egress: args.egress ?? t.egress ?? "nat",
          template: { name: t.name, generation: t.generation }, persistent: args.persistent, clone: args.clone, startedBy: "fork",
          metadata: c.metadata ?? args.metadata, timings: {},
          ...(owner ? { pool: { name: owner.pool, index: owner.indexOf(c.name) } } : {}),
          ...(args.limits ? { limits: args.limits } : {}),
        };
        store.writeVm(vm);
        vms.push(vm);
      }
      return { planned: vms, settings };
    } catch (err) {
      // A name that is taken (or a bad one) fails the whole fork before anything runs.
      for (const n of reserved) store.remove("vms", n);
      throw err;
    }
  });

  if (args.clone === "linked" && !args.persistent) await ensureOverlayPrototype(t);
  const dirs = planned.map((vm) => store.dir("vms", vm.name));
  await Promise.all([createFifos(dirs), createLogPipes(dirs)]).catch((err) => ctx.log.log("warn", `${messageOf(err)}; each child makes its own`));
  const result: ForkResult = { children: [], failed: [], notAttempted: [] };
  const maxInARow = settings.maxConsecutiveFailures;
  let next = 0;
  let inARow = 0;
  let stoppedBy: ForkvmError | undefined;
  const worker = async () => {
    while (next < planned.length && !stoppedBy) {
      const vm = planned[next++];
      const undo = new Undo(ctx.log);
      undo.push("remove VM", () => store.remove("vms", vm.name));
      try {
        await forkInto(ctx, t, vm, args.readyTimeoutS * 1000, undo, state);
        vm.state = "running";
        store.writeVm(vm);
        undo.commit();
        result.children.push(vm);
        inARow = 0;
      } catch (err) {
        await undo.run();
        const error = err instanceof ForkvmError ? err : new ForkvmError("QEMU", `Cannot fork ${vm.name}: ${messageOf(err)}`, { cause: err });
        result.failed.push({ name: vm.name, error });
        ctx.log.log("error", error.message, { vm: vm.name });
        if (++inARow >= maxInARow) stoppedBy ??= error;
      }
      ctx.progress?.({ step: "fork", message: vm.name, done: result.children.length + result.failed.length, total: planned.length });
    }
  };
  await Promise.all(Array.from({ length: Math.min(args.concurrency, planned.length) }, worker));
  if (stoppedBy) {
    // Stop trying (a broken template or host fails every child alike): release the rest.
    const rest = planned.slice(next);
    for (const vm of rest) {
      store.remove("vms", vm.name);
      const error = new ForkvmError(stoppedBy.code, `Cannot fork ${vm.name}: not attempted: the fork stopped after ${maxInARow} failures in a row (the last: ${stoppedBy.message})`, { cause: stoppedBy, details: { notAttempted: true } });
      result.failed.push({ name: vm.name, error });
      result.notAttempted.push(vm.name);
    }
    if (rest.length) ctx.log.log("error", `fork of ${t.name} stopped after ${maxInARow} failures in a row: ${rest.length} of ${planned.length} children not attempted`);
  }
  result.children.sort((a, b) => a.name.localeCompare(b.name, undefined, { numeric: true }));
  return result;
}
