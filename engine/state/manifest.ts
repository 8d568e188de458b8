// zod schemas of the manifests the engine keeps on disk, one per VM, template and pool.
// Every manifest carries `version`; an object exists when its manifest validates.
// New fields are optional, so older manifests stay valid; a change that is not must bump `version`.
import { z } from "zod";
import { Egress, Limits, Name, PoolFields } from "../spec";

export const PortForward = z.object({
  host: z.number().int().min(1).max(65535),
  guest: z.number().int().min(1).max(65535),
  proto: z.enum(["tcp", "udp"]),
  /** Picked by forkvm, not the user's: a launch moves it to another port when it is taken. */
  auto: z.boolean().optional(),
}).strict();

export const MachineShape = z.object({
  accel: z.enum(["kvm", "tcg"]),
  machine: z.string(),
  cpu: z.string().optional(),
  memoryMiB: z.number().int(),
  vcpus: z.number().int(),
  kernel: z.string(),
  initrd: z.string(),
  cmdline: z.string(),
  disk: z.boolean(),
  nic: z.boolean(),
}).strict();

/** The manifest version this forkvm writes and reads; a higher one was written by a newer forkvm (left alone, reported). */
export const MANIFEST_VERSION = 1;

/** `starting`: a stopped VM being launched again (start, reset); like `creating`, it names the process doing it (`op`). */
export const VmState = z.enum(["creating", "starting", "running", "stopped", "consumed"]);

/** A process as recorded: pid, start time (clock ticks after boot) and boot id, so a reused pid never passes for it. */
export const ProcessRecord = z.object({ pid: z.number().int(), start: z.number(), boot: z.string() }).strict();

/**
 * A multi-step operation in flight on a VM and the process doing it. While that process lives the
 * operation is in progress; once it is gone the operation was interrupted: `ls` says so and `gc`
 * finishes it (store.ts stamps create/start; instance/recovery.ts writes capture).
 */
export const OpRecord = z.object({
  what: z.enum(["create", "start", "capture"]),
  by: ProcessRecord,
  since: z.string(),
  /** capture: the template being made and its source mode. */
  template: Name.optional(),
  source: z.enum(["frozen", "running"]).optional(),
  /** capture: files moved from the parent so far (from → to), so an interrupted capture can put them back. */
  moved: z.array(z.object({ from: z.string(), to: z.string() }).strict()).optional(),
}).strict();
export type OpRecord = z.infer<typeof OpRecord>;

export const VmManifest = z.object({
  version: z.literal(1),
  kind: z.literal("vm"),
  name: Name,
  role: z.enum(["parent", "child"]),
  createdAt: z.string(),
  /** What the engine last made of it; `ls` reconciles with the process (a dead `running` is `crashed`). */
  state: VmState,
  shape: MachineShape,
  /** Current QEMU instance: its token (in its command line) and pid. */
  /** 12 hex digits (instance/identity.ts newToken): it is matched in /proc cmdlines and names cgroups, so never anything else. */
  token: z.string().regex(/^[0-9a-f]{12}$/, "must be 12 lower-case hex digits"),
  pid: z.number().int().optional(),
  memoryPath: z.string(),
  diskPath: z.string().optional(),
  mac: z.string(),
  hostname: z.string(),
  forwards: z.array(PortForward),
  /** Where its network goes besides its forwards (spec.ts Egress); absent: `nat` (older manifests). */
  egress: Egress.optional(),
  /** Parents: guest commands run before the parent counted as ready. */
  init: z.array(z.string()).optional(),
  /** Parents: the template that consumed it (frozen source) or the last one taken of it. */
  templates: z.array(z.string()).optional(),
  /** Children: where they came from. */
  template: z.object({ name: z.string(), generation: z.string() }).optional(),
  persistent: z.boolean().optional(),
  /** Children: linked (memory and disk shared with the template) or full (own copies, independent). */
  clone: z.enum(["linked", "full"]).optional(),
  /** How the current instance started: a cold boot from the image, or a fork. */
  startedBy: z.enum(["boot", "fork"]),
  metadata: z.record(z.string(), z.string()).optional(),
  /** Children of a pool: the pool that created (and owns) it, and its index there. */
  pool: z.object({ name: Name, index: z.number().int().min(1) }).strict().optional(),
  timings: z.record(z.string(), z.number()).optional(),
  /** The operation in flight and who runs it (see OpRecord); absent when none is. */
  op: OpRecord.optional(),
  /** Caps on its QEMU's CPU, memory and disk I/O (spec.ts Limits), applied at every launch. */
  limits: Limits.optional(),
}).strict();
export type VmManifest = z.infer<typeof VmManifest>;

export const TemplateManifest = z.object({
  version: z.literal(1),
  kind: z.literal("template"),
  name: Name,
  generation: z.string(),
  createdAt: z.string(),
  source: z.enum(["frozen", "running"]),
  parent: z.string(),
  shape: MachineShape,
  memoryPath: z.string(),
  statePath: z.string(),
  stateBytes: z.number().int(),
  stateSha256: z.string(),
  diskPath: z.string().optional(),
  /** The parent's MAC and hostname: children get their own. */
  parentMac: z.string(),
  parentHostname: z.string(),
  /** The parent's egress when captured: what its children get unless forked with another. */
  egress: Egress.optional(),
  timings: z.record(z.string(), z.number()),
  /**
   * The memory image kept on disk (sparse: zero pages are holes), put back in tmpfs on first use
   * after a reboot emptied it. `sha256` covers the non-zero 4 KiB pages in order, then a bitmap of
   * which pages are non-zero (instance/template-files.ts). Absent on templates made before it.
   */
  memoryImage: z.object({ path: z.string(), sha256: z.string(), dataBytes: z.number().int() }).strict().optional(),
  /** The QEMU that captured it (version; binary path and identity): children must run the same. */
  qemu: z.object({ version: z.string(), binary: z.string(), id: z.string().optional() }).strict().optional(),
}).strict();
export type TemplateManifest = z.infer<typeof TemplateManifest>;

/** A child a pool owns: recorded when the pool creates (or adopts) it. */
export const PoolChildRecord = z.object({
  name: Name,
  index: z.number().int().min(1),
  /** The VM's createdAt when the pool made it: a later object of the same name is not this child. */
  createdAt: z.string(),
}).strict();
export type PoolChildRecord = z.infer<typeof PoolChildRecord>;

export const PoolManifest = z.object({
  version: z.literal(1),
  kind: z.literal("pool"),
  name: Name,
  createdAt: z.string(),
  updatedAt: z.string(),
  /** What was last declared (defaults applied). */
  spec: PoolFields.extend({ name: Name }),
  /** The template generation the pool runs or rolls to. */
  generation: z.string().optional(),
  /** The children the pool owns. It never touches an object that is not listed here. */
  children: z.array(PoolChildRecord),
}).strict();
export type PoolManifest = z.infer<typeof PoolManifest>;
