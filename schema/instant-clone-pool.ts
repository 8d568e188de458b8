// InstantClonePool: a fleet of running children forked from a Template, kept equal to what is
// declared: resized in place, healed, rolled over to a new template generation in batches.
import { z } from "zod";
import { MacPrefix, Port, Proto, ResolvedForward, SdkInputs, VmName } from "./common";
import { VmStatus } from "./parent-vm";

export const METADATA_KEY_RE = /^[A-Za-z_][A-Za-z0-9_]{0,63}$/;
/** Placeholders a metadata value may use; each child gets its own values. */
export const METADATA_PLACEHOLDERS = ["name", "index", "hostname", "pool", "template", "generation"] as const;
export const PERCENT_RE = /^([1-9][0-9]?|100)%$/;

export const PoolForward = z
  .object({
    guest: Port.describe("Port inside every child."),
    hostBase: Port.optional().describe("Child n (1-based) listens on 127.0.0.1:hostBase+n-1; absent: a free port per child (see `children[].forwards`)."),
    proto: Proto.default("tcp").describe("`tcp` or `udp`."),
  })
  .strict();

export const UpdatePolicy = z
  .object({
    maxUnavailable: z
      .union([z.number().int("must be an integer").min(1, "must be at least 1"), z.string().regex(PERCENT_RE, "must be a count or a percentage such as \"25%\"")])
      .default(1)
      .describe("How many children a rolling update may replace at once: a count, or a percentage of `size` (rounded down, at least 1)."),
  })
  .strict();

export const InstantClonePoolInputs = z
  .object({
    template: VmName.describe("The Template to fork from: its `id` (or `name`). Changing it (a new generation) rolls the children over in batches."),
    size: z.number().int("must be an integer").min(0, "must be at least 0").max(10_000, "must be at most 10000").describe("How many children run."),
    persistent: z.boolean().default(false).describe("Persistent children keep their delta disk across stop/start (linked clones); non-persistent ones keep it on tmpfs and `reset` returns them to the template's state."),
    namePrefix: VmName.optional().describe("Children are named and hostnamed `<namePrefix>-<n>`, n = 1..size. Default: the resource name plus a random suffix."),
    macPrefix: MacPrefix.optional().describe("MAC prefix of the children's NICs, 1 to 5 octets (e.g. to match a DHCP or firewall rule)."),
    metadata: z
      .record(z.string().regex(METADATA_KEY_RE, "keys must look like shell variables: letters, digits and '_'"), z.string())
      .default({})
      .describe("Key/value pairs handed to each child's guest in /etc/forkvm/metadata (`KEY='value'` lines) and /etc/forkvm/metadata.json. Values may use {name}, {index}, {hostname}, {pool}, {template} and {generation}."),
    forwards: z.array(PoolForward).default([]).describe("Port forwards from 127.0.0.1 to every child."),
    updatePolicy: UpdatePolicy.default({ maxUnavailable: 1 }).describe("How a change of template (or of persistent, macPrefix, forwards) rolls over the children."),
    concurrency: z.number().int().min(1).max(64).default(4).describe("How many children are forked at once."),
    readyTimeoutS: z.number().int().min(1).max(3600).default(60).describe("How long a child may take from fork to agent-ready, in seconds."),
    ...SdkInputs,
  })
  .strict();
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

export const InstantClonePoolOutputs = InstantClonePoolInputs.extend({
  namePrefix: VmName.describe("The children's name prefix; also the resource's id."),
  estimate: Estimate.describe("Memory and disk the fleet costs; computed in check, so `pulumi preview` shows it."),
  plan: z.array(z.string()).describe("What the next update will do (computed in check from the live fleet); empty after an update."),
  children: z.array(Child).describe("Every child, sorted by index."),
  generation: z.string().describe("The template generation the pool is (rolling) on."),
  ready: z.number().int().describe("How many children run the declared template generation."),
}).strict();
export type InstantClonePoolOutputs = z.output<typeof InstantClonePoolOutputs>;
