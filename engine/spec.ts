// The one spec of every input the engine takes: names, MACs, hostnames, ports, metadata, and the
// arguments of parent, template, fork and pool, with their defaults, ranges and descriptions.
// The CLI, the Pulumi schemas (schema/) and the docs derive from these; nothing restates them.
import { z } from "zod";
import { ForkvmError } from "./errors";

// ---------------------------------------------------------------------------------------------
// Names and identities

/** VMs, templates and pools share one namespace; a name is also a child's default hostname. */
export const NAME_RE = /^[a-z0-9][a-z0-9-]{0,62}$/;
export const Name = z.string().regex(NAME_RE, "must be lower-case letters, digits and '-', 1 to 63 characters, starting with a letter or digit");

/** A DNS label. */
export const HOSTNAME_RE = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
export const Hostname = z.string().regex(HOSTNAME_RE, "must be a DNS label: lower-case letters, digits and '-', 1 to 63 characters, not starting or ending with '-'");

export const MAC_RE = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;
export const Mac = z.string().regex(MAC_RE, "must be six lower-case hex octets separated by ':'");

/** 1 to 5 hex octets, e.g. "52:54:00" (QEMU's locally administered range). */
export const MAC_PREFIX_RE = /^([0-9a-fA-F]{2})(:[0-9a-fA-F]{2}){0,4}$/;
export const MacPrefix = z.string().regex(MAC_PREFIX_RE, "must be 1 to 5 hex octets separated by ':', e.g. 52:54:00");

// ---------------------------------------------------------------------------------------------
// Ports and metadata

export const Port = z.number().int("must be an integer").min(1, "must be at least 1").max(65535, "must be at most 65535");
export const Proto = z.enum(["tcp", "udp"]);
export const Accel = z.enum(["auto", "kvm", "tcg"]);

/** A port forward of one VM: 127.0.0.1:host on the host reaches `guest` inside it. */
export const ForwardSpec = z
  .object({
    guest: Port.describe("Port inside the guest."),
    host: z.number().int("must be an integer").min(0, "must be at least 0").max(65535, "must be at most 65535").optional().describe("Port on 127.0.0.1; 0 or absent picks a free one."),
    proto: Proto.default("tcp").describe("`tcp` or `udp`."),
  })
  .strict();

/**
 * What a VM's network reaches besides the forwards declared into it (engine/net). Neither backend
 * ever reaches the host's loopback (127.0.0.1: other VMs' forwards, local services) from the guest.
 */
export const Egress = z.enum(["nat", "none"]).describe("`nat`: the guest reaches the outside through the host (passt: TCP, UDP, ICMP, DNS through the host's resolver), never the host's loopback services. `none`: nothing leaves the VM; only its declared forwards reach in.");
export type Egress = z.output<typeof Egress>;

/** A port forward of every child of a pool. */
export const PoolForward = z
  .object({
    guest: Port.describe("Port inside every child."),
    hostBase: Port.optional().describe("Child n (1-based) listens on 127.0.0.1:hostBase+n-1; absent: a free port per child (see `children[].forwards`)."),
    proto: Proto.default("tcp").describe("`tcp` or `udp`."),
  })
  .strict();

/** Metadata keys look like shell variables (the guest sources /etc/forkvm/metadata). */
export const METADATA_KEY_RE = /^[A-Za-z_][A-Za-z0-9_]{0,63}$/;
export const MetadataKey = z
  .string()
  .regex(METADATA_KEY_RE, "must look like a shell variable: letters, digits and '_', not starting with a digit, at most 64 characters")
  // A JSON object would drop it silently (it names the prototype), so the guest would never see it.
  .refine((k) => k !== "__proto__", "must not be __proto__");
export const Metadata = z.record(MetadataKey, z.string());

/** Keys the engine sets on a pool's children; users cannot set keys with this prefix. */
export const RESERVED_METADATA_PREFIX = "FORKVM_";
/** Placeholders a pool's metadata value may use; each child gets its own values. */
export const METADATA_PLACEHOLDERS = ["name", "index", "hostname", "pool", "template", "generation"] as const;

// ---------------------------------------------------------------------------------------------
// Limits of one VM (cgroups and QEMU's disk throttling) and the host's own settings

/** What one VM's QEMU may take from the host; absent fields are not capped (see each default). */
export const Limits = z
  .object({
    cpuPercent: z.number().int("must be an integer").min(1, "must be at least 1").max(6400, "must be at most 6400").optional().describe("Host CPU the VM's QEMU may use, in percent of one core (100 = one core), enforced by a cgroup (cpu.max, or cpu.cfs_quota_us on cgroup v1). Default: no cap; a guest then uses at most about its vcpus' worth of cores."),
    memoryMiB: z.number().int("must be an integer").min(32, "must be at least 32").max(1024 * 1024, "must be at most 1048576").optional().describe("Memory the VM's QEMU may be charged, in MiB, enforced by a cgroup (memory.max): its own pages (QEMU itself, the guest pages a child wrote), and the delta disk it wrote on tmpfs; not the template pages it shares. Past it the kernel kills that QEMU alone (the VM shows as crashed). A parent is charged all of its guest memory: give it more than memoryMiB. Default: no cap (a child is bounded by its guest memory plus QEMU's overhead)."),
    iops: z.number().int("must be an integer").min(1, "must be at least 1").max(10_000_000, "must be at most 10000000").optional().describe("Disk operations per second (reads and writes together) of the VM's disk (QEMU's throttling.iops-total). Default: unthrottled."),
    bps: z.number().int("must be an integer").min(4096, "must be at least 4096").max(1024 ** 4, "must be at most 1099511627776").optional().describe("Disk bytes per second (reads and writes together) of the VM's disk (QEMU's throttling.bps-total). Default: unthrottled."),
  })
  .strict();
export type Limits = z.output<typeof Limits>;

/**
 * Settings of the host that bound forks: `<home>/host.json` (a JSON object of these fields), each
 * overridden by its environment variable (HOST_SETTINGS_ENV). Read by ops/admission.ts.
 */
export const HostSettings = z
  .object({
    maxVms: z.number().int("must be an integer").min(1, "must be at least 1").max(1_000_000, "must be at most 1000000").default(1000).describe("The most forkvm VMs (QEMU processes of any forkvm home: children, parents, template builders) this host runs at once; a fork that would pass it is refused before anything starts. Env FORKVM_MAX_VMS."),
    maxConsecutiveFailures: z.number().int("must be an integer").min(1, "must be at least 1").max(1_000_000, "must be at most 1000000").default(3).describe("A fork of many children stops after this many failures in a row; the children not yet attempted are reported as such and nothing of them is left. Env FORKVM_MAX_CONSECUTIVE_FAILURES."),
    memoryReserveMiB: z.number().int("must be an integer").min(0, "must be at least 0").max(1024 * 1024, "must be at most 1048576").default(256).describe("Memory (MiB of MemAvailable) a fork must leave to the host. Env FORKVM_MEMORY_RESERVE_MIB."),
  })
  .strict();
export type HostSettings = z.output<typeof HostSettings>;
export const HOST_SETTINGS_ENV: Record<keyof HostSettings, string> = {
  maxVms: "FORKVM_MAX_VMS",
  maxConsecutiveFailures: "FORKVM_MAX_CONSECUTIVE_FAILURES",
  memoryReserveMiB: "FORKVM_MEMORY_RESERVE_MIB",
};

// ---------------------------------------------------------------------------------------------
// Parent

export const ParentArgs = z
  .object({
    name: Name.describe("The VM's name in the engine (and its hostname)."),
    image: Name.default("default").describe("A guest image built with `forkvm image build` (a name: it names a directory of the image cache)."),
    kernel: z.string().min(1).optional().describe("Bring your own kernel instead of the image (with `initrd`)."),
    initrd: z.string().min(1).optional().describe("Bring your own initramfs instead of the image (with `kernel`)."),
    cmdline: z.string().optional().describe("Kernel command line; default: the image's."),
    memoryMiB: z.number().int("must be an integer").min(32, "must be at least 32").max(1024 * 1024, "must be at most 1048576").default(256).describe("Guest memory in MiB; at least the image's minimum (image.json `minMemoryMiB`). Every child maps it copy-on-write."),
    vcpus: z.number().int("must be an integer").min(1, "must be at least 1").max(64, "must be at most 64").default(1).describe("Virtual CPUs."),
    diskMiB: z.number().int("must be an integer").min(0, "must be at least 0").max(64 * 1024 * 1024, "must be at most 67108864").default(256).describe("Size of a new empty data disk (ext4, /data in the default image); 0 for none. Ignored with `diskImage`."),
    diskImage: z.string().min(1).optional().describe("An existing qcow2 or raw disk image; the parent writes to an overlay, never to it."),
    init: z.array(z.string().min(1, "must not be empty")).default([]).describe("Shell commands run in the guest, in order, before the parent counts as ready (start and warm your applications here). They run again whenever the parent is started again."),
    forwards: z.array(ForwardSpec).default([]).describe("Port forwards from 127.0.0.1 to the parent."),
    nic: z.boolean().default(true).describe("Give the VM a virtio NIC (user-mode networking)."),
    egress: Egress.default("nat").describe("Where the parent's network goes: `nat` (the outside, never the host's loopback) or `none` (only its forwards reach in). Its children inherit it unless their fork or pool says otherwise."),
    macPrefix: MacPrefix.optional().describe("MAC prefix of the parent's NIC, 1 to 5 octets."),
    accel: Accel.default("auto").describe("`auto` probes KVM and falls back to TCG when KVM cannot run guest kernels at speed."),
    bootTimeoutS: z.number().int("must be an integer").min(1, "must be at least 1").max(3600, "must be at most 3600").default(300).describe("How long the boot plus the init commands may take, in seconds."),
    limits: Limits.optional().describe("Caps on the parent's CPU, memory and disk I/O (kept across restarts). Default: none."),
  })
  .strict();
export type ParentArgs = z.input<typeof ParentArgs>;

// ---------------------------------------------------------------------------------------------
// Template

export const TemplateArgs = z
  .object({
    name: Name.describe("The template's name in the engine."),
    parent: Name.describe("The parent VM to capture."),
    source: z.enum(["frozen", "running"]).default("frozen").describe("`frozen`: stop the parent and take its memory as is (the parent is consumed). `running`: live-capture it with a pause of a few ms; the parent keeps running and can be captured again."),
    downtimeLimitMs: z.number().int("must be an integer").min(1, "must be at least 1").max(10_000, "must be at most 10000").default(30).describe("`running` only: the longest pause QEMU may aim for at the end of the live capture."),
    quiesceTimeoutMs: z.number().int("must be an integer").min(0, "must be at least 0").max(60_000, "must be at most 60000").default(5000).describe("The longest wait for the parent's vCPU to go idle before the capture (a guest that just booted keeps busy for ~1 s, and every child would redo that work); 0: at once."),
  })
  .strict();
export type TemplateArgs = z.input<typeof TemplateArgs>;

// ---------------------------------------------------------------------------------------------
// Fork

export const Concurrency = z.number().int("must be an integer").min(1, "must be at least 1").max(64, "must be at most 64").default(4).describe("How many children are forked at once.");
export const ReadyTimeoutS = z.number().int("must be an integer").min(1, "must be at least 1").max(3600, "must be at most 3600").default(60).describe("How long a child may take from fork to agent-ready, in seconds.");

/** One child of a fork, given exactly (instead of count + prefix). */
export const ChildSpec = z
  .object({
    name: Name.describe("The child's name."),
    hostname: Hostname.optional().describe("Its hostname; default: its name."),
    mac: Mac.optional().describe("Its MAC (e.g. to keep a child's MAC across a re-fork); default: random under macPrefix."),
    metadata: Metadata.optional().describe("Its own metadata, instead of the fork's `metadata`."),
    forwards: z.array(ForwardSpec).optional().describe("Its own port forwards, instead of the fork's `forwards`."),
  })
  .strict();
export type ChildSpec = z.input<typeof ChildSpec>;

export const ForkArgs = z
  .object({
    template: Name.describe("The template to fork from."),
    count: z.number().int("must be an integer").min(1, "must be at least 1").max(10_000, "must be at most 10000").default(1).describe("How many children (ignored with `names` or `children`)."),
    prefix: Name.optional().describe("Children are named <prefix>-<n> with the lowest free n; default: the template's name."),
    names: z.array(Name).refine((a) => new Set(a).size === a.length, "must not name a child twice").optional().describe("Exact names instead of prefix-numbering (count is then names.length)."),
    hostnames: z.array(Hostname).optional().describe("Hostnames, one per name (default: the name)."),
    macs: z.array(Mac).optional().describe("MACs, one per name; default: random under macPrefix."),
    children: z.array(ChildSpec).min(1, "must name at least one child").optional().describe("Each child exactly: name, hostname, MAC, metadata, forwards."),
    persistent: z.boolean().default(false).describe("Persistent children keep their delta disk across stop/start; non-persistent ones keep it on tmpfs and `reset` returns them to the template's state."),
    clone: z.enum(["linked", "full"]).default("linked").describe("`linked`: memory copy-on-write and a delta disk on the template (instant clone); `full`: private copies of memory and disk, independent of the template."),
    macPrefix: MacPrefix.optional().describe("MAC prefix of the children's NICs, 1 to 5 octets."),
    forwards: z.array(ForwardSpec).default([]).describe("Port forwards from 127.0.0.1 to every child (a host port per child)."),
    egress: Egress.optional().describe("Where the children's network goes: `nat` or `none`. Default: the egress of the template's parent."),
    concurrency: Concurrency,
    metadata: Metadata.optional().describe("Handed to each child as /etc/forkvm/metadata.json and /etc/forkvm/metadata (KEY='value' lines), after every fork, reset and start."),
    readyTimeoutS: ReadyTimeoutS,
    limits: Limits.optional().describe("Caps on each child's CPU, memory and disk I/O (kept across stop, start and reset). Default: none."),
  })
  .strict();
export type ForkArgs = z.input<typeof ForkArgs>;

// ---------------------------------------------------------------------------------------------
// Pool

export const PERCENT_RE = /^([1-9][0-9]?|100)%$/;

export const MaxUnavailable = z
  .union([z.number().int("must be an integer").min(1, "must be at least 1"), z.string().regex(PERCENT_RE, "must be a count or a percentage such as \"25%\"")])
  .default(1)
  .describe("How many children a rolling update may replace at once: a count, or a percentage of `size` (rounded down, at least 1).");

export const UpdatePolicy = z.object({ maxUnavailable: MaxUnavailable }).strict();

/** The pool's fields; PoolArgs adds the rules that span fields (schemas derive from this one). */
export const PoolFields = z
  .object({
    name: Name.describe("The pool's name in the engine."),
    template: Name.describe("The template to fork from. Changing it (or its generation) rolls the children over in batches."),
    size: z.number().int("must be an integer").min(0, "must be at least 0").max(10_000, "must be at most 10000").describe("How many children run."),
    persistent: z.boolean().default(false).describe("Persistent children keep their delta disk across stop/start (linked clones); non-persistent ones keep it on tmpfs and `reset` returns them to the template's state."),
    prefix: Name.optional().describe("Children are named and hostnamed `<prefix>-<n>`, n = 1..size. Default: the pool's name."),
    macPrefix: MacPrefix.optional().describe("MAC prefix of the children's NICs, 1 to 5 octets (e.g. to match a DHCP or firewall rule)."),
    metadata: Metadata.default({}).describe("Key/value pairs handed to each child's guest in /etc/forkvm/metadata (`KEY='value'` lines) and /etc/forkvm/metadata.json. Values may use {name}, {index}, {hostname}, {pool}, {template} and {generation}. Keys starting with FORKVM_ are the pool's own."),
    forwards: z.array(PoolForward).default([]).describe("Port forwards from 127.0.0.1 to every child."),
    egress: Egress.optional().describe("Where the children's network goes: `nat` or `none`. Default: the egress of the template's parent."),
    updatePolicy: UpdatePolicy.default({ maxUnavailable: 1 }).describe("How a change of template (or of persistent, macPrefix, forwards) rolls over the children."),
    concurrency: Concurrency,
    readyTimeoutS: ReadyTimeoutS,
    limits: Limits.optional().describe("Caps on each child's CPU, memory and disk I/O, applied when a child is forked. Default: none."),
  })
  .strict();

export const PoolArgs = PoolFields.superRefine((p, ctx) => {
  for (const issue of poolIssues(p)) ctx.addIssue({ code: "custom", path: issue.path, message: issue.message });
});
export type PoolArgs = z.input<typeof PoolArgs>;
export type PoolSpec = z.output<typeof PoolArgs>;

/** Rules of a pool that span fields: name lengths, reserved keys, placeholders, forwards. */
export function poolIssues(p: { name: string; prefix?: string; size: number; metadata: Record<string, string>; forwards: Array<{ guest: number; hostBase?: number; proto: string }> }): Array<{ path: PropertyKey[]; message: string }> {
  // zod runs these rules even when a field failed its own check: take nothing for granted.
  const out: Array<{ path: PropertyKey[]; message: string }> = [];
  const size = Number.isInteger(p.size) && p.size >= 0 ? p.size : 0;
  const prefix = p.prefix ?? p.name;
  if (typeof prefix === "string" && `${prefix}-${Math.max(1, size)}`.length > 63) out.push({ path: [p.prefix ? "prefix" : "name"], message: `too long: child names "${prefix}-${size}" must fit in 63 characters` });
  const metadata = p.metadata && typeof p.metadata === "object" ? p.metadata : {};
  for (const [k, v] of Object.entries(metadata)) {
    if (k.startsWith(RESERVED_METADATA_PREFIX)) out.push({ path: ["metadata", k], message: `keys starting with ${RESERVED_METADATA_PREFIX} are the pool's own (FORKVM_POOL, FORKVM_INDEX, ...)` });
    if (typeof v !== "string") continue;
    for (const m of v.matchAll(/\{([A-Za-z_]*)\}/g)) {
      if (!(METADATA_PLACEHOLDERS as readonly string[]).includes(m[1])) out.push({ path: ["metadata", k], message: `unknown placeholder {${m[1]}}; use ${METADATA_PLACEHOLDERS.map((x) => `{${x}}`).join(", ")}` });
    }
  }
  const seen = new Set<string>();
  for (const [i, f] of (Array.isArray(p.forwards) ? p.forwards : []).entries()) {
    if (!f || typeof f !== "object") continue;
    const key = `${f.proto ?? "tcp"}:${f.guest}`;
    if (seen.has(key)) out.push({ path: ["forwards", i, "guest"], message: `${f.proto ?? "tcp"} port ${f.guest} is forwarded twice` });
    seen.add(key);
    if (typeof f.hostBase === "number" && f.hostBase + size - 1 > 65535) out.push({ path: ["forwards", i, "hostBase"], message: `must be at most ${65536 - size}: child ${size} would listen on ${f.hostBase + size - 1}` });
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Parsing

function fieldOf(issue: z.core.$ZodIssue): string {
  const keys = issue.code === "unrecognized_keys" ? [issue.keys[0]] : [];
  return [...issue.path.map(String), ...keys].join(".") || "(input)";
}

function shapeKeys(schema: z.ZodType): string[] | undefined {
  const s = schema as unknown as { shape?: Record<string, unknown>; def?: { in?: z.ZodType; schema?: z.ZodType } };
  if (s.shape) return Object.keys(s.shape);
  const inner = s.def?.in ?? s.def?.schema;
  return inner ? shapeKeys(inner) : undefined;
}

/**
 * Parses an input against its spec. Throws INVALID_ARGUMENT naming the field (an unknown key is
 * named too, with the allowed ones) and what is allowed; details.field (the first), details.issues
 * (as text) and details.fields ({ field, message } each).
 */
export function parseArgs<S extends z.ZodType>(schema: S, input: unknown, what: string): z.output<S> {
  const r = schema.safeParse(input);
  if (r.success) return r.data;
  const allowed = shapeKeys(schema)?.join(", ");
  const fields = r.error.issues.map((i) => ({ field: fieldOf(i), message: i.code === "unrecognized_keys" ? `unknown field${allowed && i.path.length === 0 ? ` (allowed: ${allowed})` : ""}` : i.message }));
  const issues = fields.map((f) => `${f.field}: ${f.message}`);
  throw new ForkvmError("INVALID_ARGUMENT", `Cannot ${what}: ${issues.join("; ")}`, { details: { field: fields[0].field, issues, fields } });
}

/** Throws INVALID_ARGUMENT unless `name` is a valid object name (never a path: no '/', '.', '..'). */
export function checkName(name: unknown, field = "name", what = "use name"): string {
  const r = Name.safeParse(name);
  if (r.success) return r.data;
  throw new ForkvmError("INVALID_ARGUMENT", `Cannot ${what} ${JSON.stringify(name)}: ${field} ${r.error.issues[0]?.message}`, { details: { field } });
}
