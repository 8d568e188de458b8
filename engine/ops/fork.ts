// Fork: running children from a template, many at once. Names and `creating` manifests are
// reserved under the template's lock (so a concurrent `rm` of the template sees them); each child
// is then forked into its directory (instance/fork-into.ts); a child that fails is undone alone.
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
import { resolveForwards } from "./parent";

export { ForkArgs };

export interface ForkResult {
  children: VmManifest[];
  failed: Array<{ name: string; error: ForkvmError }>;
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
 * running. Throws INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS (a name is taken) or STATE (the
 * template is not whole) before any fork starts.
 */
export async function forkChildren(ctx: Ctx, input: ForkArgs, owner?: ForkOwner): Promise<ForkResult> {
  const args = parseArgs(ForkArgs, input, "fork");
  const { store } = ctx;
  const t = store.getTemplate(args.template);
  const state = checkTemplate(t);
  // Reserve names and write `creating` manifests under the template's lock, so that a
  // concurrent `rm template` sees these children.
  const planned = await store.withLock("templates", t.name, async () => {
    const specs = childSpecs(ctx, args, args.prefix ?? t.name);
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
          forwards: await resolveForwards(c.forwards ?? args.forwards),
          template: { name: t.name, generation: t.generation }, persistent: args.persistent, clone: args.clone, startedBy: "fork",
          metadata: c.metadata ?? args.metadata, timings: {},
          ...(owner ? { pool: { name: owner.pool, index: owner.indexOf(c.name) } } : {}),
        };
        store.writeVm(vm);
        vms.push(vm);
      }
      return vms;
    } catch (err) {
      // A name that is taken (or a bad one) fails the whole fork before anything runs.
      for (const n of reserved) store.remove("vms", n);
      throw err;
    }
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
