// InstantClonePool: a fleet of running children forked from a Template, kept equal to what is
// declared: resized in place, healed, rolled over to a new template generation in batches.
import { z } from "zod";
import type { Estimate as EngineEstimate, PoolChild as EngineChild } from "../engine";
import { METADATA_PLACEHOLDERS, Name, PoolFields, poolIssues } from "../engine/spec";
import { ResolvedForward, SdkInputs, VmName } from "./common";
import { VmStatus } from "./parent-vm";

export { METADATA_PLACEHOLDERS };

/** The pool's fields as Pulumi sees them: the engine's, with a generated name and `namePrefix` for the engine's `prefix`. */
const PoolInputFields = PoolFields.omit({ name: true, prefix: true, template: true }).extend({
  template: VmName.describe("The Template to fork from: its `id` (or `name`). Changing it (a new generation) rolls the children over in batches."),
  name: Name.optional().describe("The pool's name in the engine; also the resource's id. Default: the resource name plus a suffix derived from its URN."),
  namePrefix: Name.optional().describe("Children are named and hostnamed `<namePrefix>-<n>`, n = 1..size. Default: the pool's name."),
  ...SdkInputs,
}).strict();

export const InstantClonePoolInputs = PoolInputFields.superRefine((p, ctx) => {
  if (typeof p.name !== "string" && typeof p.namePrefix !== "string") return; // generated in check
  const name = p.name ?? p.namePrefix!;
  for (const issue of poolIssues({ ...p, name, prefix: p.namePrefix })) {
    ctx.addIssue({ code: "custom", path: issue.path.map((k) => (k === "prefix" ? "namePrefix" : k)), message: issue.message });
  }
});
export type InstantClonePoolArgs = z.input<typeof InstantClonePoolInputs>;

export const Estimate = z
  .object({
    basis: z.enum(["measured", "model", "unknown"]).describe("`measured`: from children of this template running now; `model`: from the template's size and a per-child overhead measured on this kind of host; `unknown`: the template's size is not known yet."),
    children: z.number().int(),
    memory: z
      .object({
        sharedMiB: z.number().describe("The template's memory image, mapped copy-on-write by every child (counted once)."),
        privatePerChildMiB: z.number().describe("Per child: QEMU's own memory plus guest pages it wrote."),
        privateMiB: z.number(),
        totalMiB: z.number().describe("sharedMiB + privateMiB (+ delta disks when they live on tmpfs)."),
        asFullVmsMiB: z.number().describe("What the same fleet would take as ordinary VMs, for comparison."),
      })
      .strict(),
    disk: z
      .object({
        perChildMiB: z.number().describe("A new delta disk; it grows with what the child writes."),
        totalMiB: z.number(),
        location: z.enum(["tmpfs", "state-dir"]).describe("Non-persistent children keep their delta disk on tmpfs (it counts as memory)."),
      })
      .strict(),
    hostFreeMiB: z.number().optional().describe("Free memory on the host (MemAvailable) when the estimate was made."),
    warnings: z.array(z.string()),
    summary: z.string().describe("One line for humans; the SDK logs it on the resource during preview and up."),
  })
  .strict();
export type Estimate = z.infer<typeof Estimate>;

export const Child = z
  .object({
    name: VmName.describe("The child's name in the engine (`forkvm exec <name> ...`)."),
    vmId: z.string().describe("Identifies this instance of the child: a re-forked child keeps its name but gets a new vmId."),
    index: z.number().int().describe("n in `<namePrefix>-<n>`."),
    mac: z.string(),
    hostname: z.string(),
    template: z.string().describe("The template it was forked from."),
    generation: z.string().describe("The template generation it was forked from."),
    persistent: z.boolean(),
    pid: z.number().int().optional().describe("QEMU's pid while it runs."),
    status: VmStatus.describe("`running`, or what went wrong (`crashed`, `stopped`, `missing`); the next update heals it."),
    forwards: z.array(ResolvedForward).describe("127.0.0.1 ports that reach this child."),
    createdAt: z.string(),
  })
  .strict();
export type Child = z.infer<typeof Child>;

export const InstantClonePoolOutputs = PoolInputFields.extend({
  name: VmName.describe("The pool's name in the engine; also the resource's id."),
  namePrefix: VmName.describe("The children's name prefix."),
  estimate: Estimate.describe("Memory and disk the fleet costs; computed in check, so `pulumi preview` shows it."),
  plan: z.array(z.string()).describe("What the next update will do (computed in check from the live fleet); empty after an update."),
  children: z.array(Child).describe("Every child, sorted by index."),
  generation: z.string().describe("The template generation the pool is (rolling) on."),
  ready: z.number().int().describe("How many children run the declared template generation."),
  home: z.string().describe("The forkvm home (state directory) the resource lives in, recorded when it was created; refresh, update and delete use it."),
}).strict();
export type InstantClonePoolOutputs = z.output<typeof InstantClonePoolOutputs>;

// The outputs' shapes are the engine's: a drift fails the type-check here.
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : never) : never;
export const ESTIMATE_MATCHES_ENGINE: Same<z.output<typeof Estimate>, EngineEstimate> = true;
export const CHILD_MATCHES_ENGINE: Same<Omit<z.output<typeof Child>, "status">, Omit<EngineChild, "status">> = true;
