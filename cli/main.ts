// The `forkvm` command line: one sub-command per engine operation; tables for people,
// --json for machines; progress and warnings on stderr.
import * as net from "node:net";
import { Command, InvalidArgumentError, Option } from "commander";
import type { z } from "zod";
import { Engine } from "../engine/engine";
import * as spec from "../engine/spec";
import type { ApplyResult, PoolArgs, PoolChange, PoolInfo, PoolSpec } from "../engine";
import { doctor } from "../engine/doctor";
import { buildDefaultImage } from "../engine/image";
import { vmPaths } from "../engine/qemu/argv";
import { cliLogger, forwardsText, printJson, progressReporter, reportError, table } from "./output";
import { ForkvmError } from "../engine/errors";

const program = new Command("forkvm")
  .description("Instant clone (VM fork) on QEMU: boot a parent, freeze it into a powered-on template, fork running children")
  .option("--home <dir>", "state directory (default: $FORKVM_HOME or $XDG_STATE_HOME/forkvm)")
  .option("--json", "print JSON for machines instead of tables")
  .option("-v, --verbose", "log what the engine does to stderr")
  .option("-q, --quiet", "no progress output")
  .showHelpAfterError();

type Globals = { home?: string; json?: boolean; verbose?: boolean; quiet?: boolean };
const globals = () => program.opts<Globals>();

function engine(): Engine {
  const g = globals();
  return new Engine({ home: g.home, log: cliLogger(Boolean(g.verbose)) });
}

/** Runs an action, mapping errors to messages and exit codes, and stopping progress bars. */
function action<A extends unknown[]>(fn: (...args: A) => Promise<number | void> | number | void) {
  return async (...args: A) => {
    try {
      process.exitCode = (await fn(...args)) ?? 0;
    } catch (err) {
      process.exitCode = reportError(err, Boolean(globals().json));
    }
  };
}

type NumberSchema = { def: { type: string }; minValue?: number | null; maxValue?: number | null; unwrap?: () => unknown };

/** The range of a number in the engine's spec (through .default and .optional): the CLI never restates it. */
function rangeOf(schema: z.ZodType): { min: number; max: number } {
  let s = schema as unknown as NumberSchema;
  while (s.def.type !== "number" && typeof s.unwrap === "function") s = s.unwrap() as NumberSchema;
  if (s.def.type !== "number") throw new Error(`rangeOf: not a number schema (${s.def.type})`);
  return { min: s.minValue ?? Number.MIN_SAFE_INTEGER, max: s.maxValue ?? Number.MAX_SAFE_INTEGER };
}

/** A parser for `flag`: a whole number in [min, max]. */
function intIn(flag: string, min: number, max: number) {
  const range = max >= Number.MAX_SAFE_INTEGER ? `of at least ${min}` : `from ${min} to ${max}`;
  return (v: string) => {
    const n = Number(v);
    if (!/^-?\d+$/.test(v.trim()) || !Number.isSafeInteger(n) || n < min || n > max) throw new InvalidArgumentError(`${flag} must be a whole number ${range}`);
    return n;
  };
}

/**
 * A whole-number option whose range (and, with `withDefault`, default) is the engine spec's
 * `schema`. Without `withDefault` the option stays undefined when not given (pools keep their value).
 */
function numberOption(flags: string, description: string, schema: z.ZodType, withDefault = true): Option {
  const opt = new Option(flags, description);
  const { min, max } = rangeOf(schema);
  opt.argParser(intIn(opt.long ?? flags, min, max));
  const d = schema.safeParse(undefined);
  if (withDefault && d.success && d.data !== undefined) opt.default(d.data);
  return opt;
}

/** The engine's default of a field, for help texts of options that have no commander default. */
function defaultText(schema: z.ZodType): string {
  const d = schema.safeParse(undefined);
  return d.success && d.data !== undefined ? String(d.data) : "none";
}

function collect(v: string, prev: string[] | boolean = []) {
  return [...(Array.isArray(prev) ? prev : []), v];
}

const PROTO = spec.Proto.options.join("|");

/** --forward GUEST or HOST:GUEST, optionally /udp. */
function parseForward(text: string) {
  const m = text.match(new RegExp(`^(?:(\\d+):)?(\\d+)(?:/(${PROTO}))?$`));
  if (!m) throw new ForkvmError("INVALID_ARGUMENT", `Cannot parse --forward ${text}: expected GUEST or HOST:GUEST, optionally /tcp or /udp`, { details: { field: "forwards" } });
  return { host: m[1] ? Number(m[1]) : undefined, guest: Number(m[2]), proto: (m[3] ?? "tcp") as "tcp" | "udp" };
}

/** A pool's --forward GUEST or GUEST:HOSTBASE (child n listens on HOSTBASE+n-1), optionally /udp. */
function parsePoolForward(text: string) {
  const m = text.match(new RegExp(`^(\\d+)(?::(\\d+))?(?:/(${PROTO}))?$`));
  if (!m) throw new ForkvmError("INVALID_ARGUMENT", `Cannot parse --forward ${text}: expected GUEST or GUEST:HOSTBASE (child n listens on 127.0.0.1:HOSTBASE+n-1), optionally /tcp or /udp`, { details: { field: "forwards" } });
  return { guest: Number(m[1]), hostBase: m[2] ? Number(m[2]) : undefined, proto: (m[3] ?? "tcp") as "tcp" | "udp" };
}

/** --metadata KEY=VALUE, repeatable, into one record; the key rule is the engine spec's. */
function parseMetadata(items: string[]): Record<string, string> {
  const out = new Map<string, string>();
  for (const item of items) {
    const eq = item.indexOf("=");
    const key = item.slice(0, Math.max(0, eq));
    const form = "expected KEY=VALUE (VALUE may be empty)";
    if (eq < 0) throw new ForkvmError("INVALID_ARGUMENT", `Cannot parse --metadata ${item}: ${form}`, { details: { field: "metadata" } });
    const k = spec.MetadataKey.safeParse(key);
    if (!k.success) throw new ForkvmError("INVALID_ARGUMENT", `Cannot parse --metadata ${item}: ${form}; KEY ${k.error.issues[0]?.message}`, { details: { field: "metadata" } });
    if (out.has(key)) throw new ForkvmError("INVALID_ARGUMENT", `Cannot parse --metadata ${item}: ${key} is given twice`, { details: { field: "metadata" } });
    out.set(key, item.slice(eq + 1));
  }
  return Object.fromEntries(out);
}

const maxUnavailableCount = (spec.MaxUnavailable.unwrap() as unknown as { options: z.ZodType[] }).options.find((o) => (o as unknown as NumberSchema).def.type === "number")!;

/** --max-unavailable K or P%: a count in the spec's range, or a percentage the spec accepts. */
function parseMaxUnavailable(v: string): number | string {
  if (spec.PERCENT_RE.test(v)) return v;
  const { min, max } = rangeOf(maxUnavailableCount);
  const n = Number(v);
  if (/^\d+$/.test(v) && Number.isSafeInteger(n) && n >= min && n <= max) return n;
  throw new InvalidArgumentError(`--max-unavailable must be a count (a whole number of at least ${min}) or a percentage of the size such as 25%`);
}

const mb = (n: number | undefined) => (n === undefined ? "-" : `${n} MiB`);
const ms = (n: number | undefined) => (n === undefined ? "-" : `${Math.round(n)} ms`);

program.command("doctor").description("check QEMU, the accelerator (probed), memory and the tmpfs for memory images")
  .option("--reprobe", "probe the accelerator again instead of using the cached result")
  .action(action(async (opts: { reprobe?: boolean }) => {
    const r = await doctor(engine().store, opts);
    if (globals().json) return printJson(r), r.ok ? 0 : 1;
    const accel = "error" in r.accel ? `error: ${r.accel.error}` : `${r.accel.accel}: ${r.accel.reason}`;
    const lines = [
      ["QEMU", r.qemu.version ? `${r.qemu.version} (machine ${r.qemu.machine})` : `missing: ${r.qemu.error}`],
      ["accelerator", accel],
      ["memory available", mb(r.memory.availableMiB)],
      ["memory images", `${r.memDir.path} (${r.memDir.type}, ${mb(r.memDir.freeMiB)} free)${r.memDir.warning ? ` warning: ${r.memDir.warning}` : ""}`],
      ["state dir", r.home],
      ["QEMU runs as", `${r.qemuUser.name}: ${r.qemuUser.reason}`],
      ["guest image", r.image.error ?? `${r.image.name}: kernel ${r.image.kernelVersion}, needs ${r.image.minMemoryMiB} MiB`],
    ];
    console.log(table(["check", "result"], lines));
    if (!("error" in r.accel) && r.accel.warning) process.stderr.write(`warning: ${r.accel.warning}\n`);
    if (r.qemuUser.warning) process.stderr.write(`warning: ${r.qemuUser.warning}\n`);
    return r.ok ? 0 : 1;
  }));

const image = program.command("image").description("guest images");
image.command("build").description("build the default guest image (Debian kernel + busybox initramfs + forkvm agent)")
  .option("--force", "rebuild even when the cached image is current")
  .action(action(async (opts: { force?: boolean }) => {
    const g = globals();
    const img = await buildDefaultImage({ force: opts.force, log: cliLogger(Boolean(g.verbose)), onProgress: g.quiet ? undefined : (s) => process.stderr.write(`image: ${s}\n`) });
    if (g.json) return printJson(img);
    console.log(table(["image", "kernel", "initrd", "min memory"], [[img.name, img.kernelVersion, img.initrd, mb(img.minMemoryMiB)]]));
  }));

const parent = program.command("parent").description("parent VMs (the VMs that get cloned)");

/** --egress and the four limits, shared by parent create, fork and pool apply/plan (ranges from the spec). */
function withVmOptions(cmd: Command, what: string): Command {
  return cmd
    .addOption(new Option("--egress <mode>", `${what}: nat reaches the outside (never the host's loopback), none reaches nothing`).choices([...spec.Egress.options]))
    .addOption(numberOption("--cpu-percent <n>", `cap ${what}'s host CPU, in percent of one core`, spec.Limits.shape.cpuPercent, false))
    .addOption(numberOption("--memory-limit <MiB>", `cap the memory ${what}'s QEMU may be charged`, spec.Limits.shape.memoryMiB, false))
    .addOption(numberOption("--iops <n>", `cap ${what}'s disk operations per second`, spec.Limits.shape.iops, false))
    .addOption(numberOption("--bps <n>", `cap ${what}'s disk bytes per second`, spec.Limits.shape.bps, false));
}

type VmOpts = { egress?: "nat" | "none"; cpuPercent?: number; memoryLimit?: number; iops?: number; bps?: number };

/** The engine's limits from the flags; undefined when none was given. */
function limitsOf(o: VmOpts): spec.Limits | undefined {
  const l = { cpuPercent: o.cpuPercent, memoryMiB: o.memoryLimit, iops: o.iops, bps: o.bps };
  return Object.values(l).some((v) => v !== undefined) ? l : undefined;
}

withVmOptions(parent.command("create <name>").description("boot a parent VM and run its init commands")
  .addOption(numberOption("--memory <MiB>", "guest memory", spec.ParentArgs.shape.memoryMiB))
  .addOption(numberOption("--vcpus <n>", "virtual CPUs", spec.ParentArgs.shape.vcpus))
  .addOption(numberOption("--disk <MiB>", "size of a new data disk (0: none)", spec.ParentArgs.shape.diskMiB))
  .option("--disk-image <path>", "use this qcow2/raw image as the base of the data disk")
  .option("--init <cmd>", "shell command run in the guest before it counts as ready (repeatable)", collect, [])
  .option("--forward <[host:]guest>", "forward a port on 127.0.0.1 to the guest (repeatable)", collect, [])
  .option("--no-nic", "no network card")
  .option("--mac-prefix <octets>", "MAC prefix, e.g. 52:54:00")
  .addOption(new Option("--accel <accel>", "accelerator").choices(["auto", "kvm", "tcg"]).default("auto"))
  .option("--kernel <path>", "bring your own kernel (with --initrd)")
  .option("--initrd <path>", "bring your own initrd (with --kernel)")
  .option("--cmdline <text>", "kernel command line for your own kernel")
  .addOption(numberOption("--timeout <s>", "deadline for boot and init, in seconds", spec.ParentArgs.shape.bootTimeoutS)), "the parent")
  .action(action(async (name: string, o: Record<string, any>) => {
    const p = progressReporter(Boolean(globals().quiet));
    const vm = await engine().withProgress(p.report).createParent({
      name, memoryMiB: o.memory, vcpus: o.vcpus, diskMiB: o.disk, diskImage: o.diskImage, init: o.init,
      forwards: o.forward.map(parseForward), nic: o.nic, macPrefix: o.macPrefix, accel: o.accel,
      kernel: o.kernel, initrd: o.initrd, cmdline: o.cmdline, bootTimeoutS: o.timeout, egress: o.egress, limits: limitsOf(o),
    }).finally(p.done);
    if (globals().json) return printJson(vm);
    console.log(table(["parent", "status", "accel", "memory", "boot", "init", "forwards"], [[vm.name, vm.status, vm.shape.accel, mb(vm.shape.memoryMiB), ms(vm.timings?.bootMs), ms(vm.timings?.initMs), forwardsText(vm.forwards)]]));
  }));

const template = program.command("template").description("powered-on templates");
template.command("create <name>").description("freeze a parent into a powered-on template")
  .requiredOption("--parent <name>", "the running parent")
  .addOption(new Option("--source <mode>", "frozen: the parent is consumed; running: it is paused briefly and resumes").choices(["frozen", "running"]).default("frozen"))
  .action(action(async (name: string, o: { parent: string; source: "frozen" | "running" }) => {
    const p = progressReporter(Boolean(globals().quiet));
    const t = await engine().withProgress(p.report).createTemplate({ name, parent: o.parent, source: o.source }).finally(p.done);
    if (globals().json) return printJson(t);
    console.log(table(["template", "generation", "source", "parent", "memory", "checkpoint", "freeze", "source downtime"], [[t.name, t.generation, t.source, t.parent, mb(t.shape.memoryMiB), `${(t.stateBytes / 1048576).toFixed(2)} MiB`, ms(t.timings.freezeMs), ms(t.timings.downtimeMs)]]));
  }));

withVmOptions(program.command("fork <template>").description("fork running children from a template")
  .addOption(numberOption("--count <n>", "how many children", spec.ForkArgs.shape.count))
  .option("--prefix <prefix>", "children are named <prefix>-<n> (default: the template's name)")
  .option("--persistent", "children keep their delta disk across stop/start")
  .option("--full", "full clones: own copies of memory and disk, independent of the template (slower, no sharing)")
  .addOption(numberOption("--concurrency <n>", "forks in flight at once", spec.Concurrency))
  .option("--forward <[host:]guest>", "forward a port to each child (host port picked per child)", collect, [])
  .option("--metadata <KEY=VALUE>", "metadata for each child, in /etc/forkvm/metadata (repeatable)", collect, [])
  .option("--mac-prefix <octets>", "MAC prefix, e.g. 52:54:00")
  .addOption(numberOption("--timeout <s>", "deadline for each child from fork to agent-ready, in seconds", spec.ReadyTimeoutS)), "each child")
  .action(action(async (tname: string, o: Record<string, any>) => {
    const p = progressReporter(Boolean(globals().quiet));
    const r = await engine().withProgress(p.report).fork({
      template: tname, count: o.count, prefix: o.prefix, persistent: Boolean(o.persistent), clone: o.full ? "full" : "linked", concurrency: o.concurrency,
      forwards: o.forward.map(parseForward), macPrefix: o.macPrefix, readyTimeoutS: o.timeout,
      metadata: o.metadata.length ? parseMetadata(o.metadata) : undefined, egress: o.egress, limits: limitsOf(o),
    }).finally(p.done);
    if (globals().json) printJson({ children: r.children, failed: r.failed.map((f) => ({ name: f.name, code: f.error.code, message: f.error.message })), notAttempted: r.notAttempted });
    else {
      console.log(table(["child", "pid", "mac", "hostname", "running", "ready", "forwards"], r.children.map((c) => [c.name, c.pid, c.mac, c.hostname, ms(c.timings?.runningMs), ms(c.timings?.readyMs), forwardsText(c.forwards)])));
      for (const f of r.failed) process.stderr.write(`forkvm: ${f.error.message}\n`);
      if (r.notAttempted.length) process.stderr.write(`forkvm: not attempted after ${r.failed.length - r.notAttempted.length} failures in a row: ${r.notAttempted.join(", ")}\n`);
    }
    return r.failed.length ? 1 : 0;
  }));

program.command("ls").description("list VMs, templates and pools (status reconciled with live processes)")
  .action(action(() => {
    const e = engine();
    const vms = e.listVms();
    const templates = e.listTemplates();
    const pools = e.listPools();
    const problems = e.problems();
    if (globals().json) return printJson({ vms, templates, pools, problems });
    console.log(table(["name", "role", "status", "pid", "pool", "template", "generation", "mac", "memory", "persistent"], vms.map((v) => [v.name, v.role, v.status, v.status === "running" ? v.pid : undefined, v.pool?.name, v.template?.name, v.template?.generation, v.mac, mb(v.shape.memoryMiB), v.role === "child" ? String(Boolean(v.persistent)) : undefined])));
    if (templates.length) console.log(table(["template", "generation", "source", "parent", "children", "created"], templates.map((t) => [t.name, t.generation, t.source, t.parent, t.children.length, t.createdAt])));
    if (pools.length) console.log(poolsTable(pools));
    if (problems.length) console.log(table(["kind", "name", "status", "gc", "why"], problems.map((p) => [p.kind, p.name, p.status, p.gc, p.message])));
  }));

program.command("inspect <name>").description("everything about one VM, template or pool (JSON)")
  .action(action((name: string) => {
    const r = engine().inspect(name);
    printJson(r.kind === "vm" ? r.vm : r.kind === "template" ? r.template : r.pool);
  }));

program.command("exec <vm> <argv...>").description("run a command in the guest: forkvm exec VM -- CMD ARGS... (no shell involved)")
  .option("--timeout <s>", "deadline for the command", intIn("--timeout", 1, 86400), 60)
  .option("--stdin", "send this process's standard input to the command")
  .action(action(async (vm: string, argv: string[], o: { timeout: number; stdin?: boolean }) => {
    const stdin = o.stdin ? await readStdin() : undefined;
    const r = await engine().exec(vm, argv, { stdin, timeoutMs: o.timeout * 1000 });
    if (globals().json) return printJson({ exitCode: r.exitCode, stdout: r.stdout.toString(), stderr: r.stderr.toString() }), r.exitCode;
    process.stdout.write(r.stdout);
    process.stderr.write(r.stderr);
    return r.exitCode;
  }));

async function readStdin(): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

program.command("console <vm>").description("attach to the VM's serial console (Ctrl-] to leave)")
  .action(action(async (name: string) => {
    const e = engine();
    const vm = e.vm(name);
    if (vm.status !== "running") throw new ForkvmError("CONFLICT", `Cannot attach to ${name}: it is ${vm.status}`);
    const sock = net.createConnection(vmPaths(e.store.dir("vms", name)).console);
    await new Promise<void>((resolve, reject) => { sock.once("connect", resolve); sock.once("error", reject); });
    process.stderr.write(`connected to ${name}'s console; Ctrl-] to leave\n`);
    if (process.stdin.isTTY) process.stdin.setRawMode(true);
    process.stdin.on("data", (d: Buffer) => { if (d.includes(0x1d)) sock.end(); else sock.write(d); });
    sock.pipe(process.stdout);
    await new Promise<void>((resolve) => sock.on("close", () => resolve()));
    if (process.stdin.isTTY) process.stdin.setRawMode(false);
    process.stdin.pause();
  }));

for (const [cmd, desc] of [
  ["reset", "return a non-persistent child to its template's state, in place"],
  ["stop", "stop a VM (a persistent child keeps its disk; a non-persistent one loses it)"],
  ["start", "start a stopped VM (persistent: cold boot from its disk; non-persistent: fork afresh)"],
] as const) {
  program.command(`${cmd} <vm>`).description(desc).action(action(async (name: string) => {
    const e = engine();
    const t0 = Date.now();
    const vm = await (cmd === "reset" ? e.reset(name) : cmd === "stop" ? e.stop(name) : e.start(name));
    if (globals().json) return printJson(vm);
    console.log(table(["vm", "status", "pid", "took"], [[vm.name, vm.status, vm.status === "running" ? vm.pid : undefined, ms(Date.now() - t0)]]));
  }));
}

program.command("stats [vms...]").description("memory per VM: RSS, PSS, private, and how much is still shared with its template")
  .action(action((names: string[]) => {
    const s = engine().stats(names.length ? names : undefined);
    if (globals().json) return printJson(s);
    const sum = (k: "rssMiB" | "pssMiB") => Math.round(s.reduce((a, x) => a + x[k], 0));
    console.log(table(["vm", "pid", "RSS", "PSS", "private", "shared with template", "guest dirty"], [
      ...s.map((x) => [x.name, x.pid, mb(x.rssMiB), mb(x.pssMiB), mb(x.privateMiB), mb(x.sharedWithTemplateMiB), mb(x.guestDirtyMiB)]),
      ["total", "", mb(sum("rssMiB")), mb(sum("pssMiB")), "", "", ""],
    ]));
  }));

program.command("rm <names...>").description("remove VMs, templates and pools (a pool goes with the children it owns; a template with children needs --force, which removes them too)")
  .option("--force", "also remove a template's children")
  .action(action(async (names: string[], o: { force?: boolean }) => {
    const r = await engine().remove(names, { force: o.force });
    if (globals().json) return printJson(r);
    console.log(table(["name", "kind", "removed"], r.map((x) => [x.name, x.kind, x.removed.join(" ") || "(nothing there)"])));
  }));

// ---------------------------------------------------------------------------------------------
// Pools: the engine plans and applies them (engine/ops/pool.ts); the CLI only reads flags and prints.

const poolCmd = program.command("pool").description("pools: a fleet of children kept as declared (size, template, metadata), healed and rolled over by the engine");

type PoolOpts = VmOpts & {
  template?: string; size?: number; persistent?: boolean; prefix?: string; maxUnavailable?: number | string;
  metadata?: string[] | false; forward?: string[] | false; macPrefix?: string; concurrency?: number; timeout?: number;
};

/** `pool apply` and `pool plan` take the same flags; on an existing pool a flag not given keeps the pool's value. */
function poolCommand(verb: "apply" | "plan", description: string): Command {
  return withVmOptions(poolCmd.command(`${verb} <name>`).description(description), "every child")
    .option("--template <name>", "the template to fork from (required for a new pool); a new template or generation rolls the children over")
    .addOption(numberOption("--size <n>", "how many children run (required for a new pool)", spec.PoolFields.shape.size, false))
    .option("--persistent", "children keep their delta disk across stop/start")
    .option("--no-persistent", "children keep their delta disk on tmpfs (the default of a new pool)")
    .option("--prefix <prefix>", "children are named <prefix>-<n>, n = 1..size (default: the pool's name)")
    .addOption(new Option("--max-unavailable <K|P%>", `how many children a roll replaces at once: a count or a percentage of the size (a new pool: ${defaultText(spec.MaxUnavailable)})`).argParser(parseMaxUnavailable))
    .option("--metadata <KEY=VALUE>", "metadata for every child, in /etc/forkvm/metadata; VALUE may use {name}, {index}, {hostname}, {pool}, {template}, {generation} (repeatable; replaces the pool's metadata)", collect)
    .option("--no-metadata", "clear the pool's metadata")
    .option("--forward <GUEST[:HOSTBASE]>", "forward a guest port of every child: child n listens on 127.0.0.1:HOSTBASE+n-1, or a free port without HOSTBASE; optionally /udp (repeatable; replaces the pool's forwards)", collect)
    .option("--no-forward", "clear the pool's port forwards")
    .option("--mac-prefix <octets>", "MAC prefix of the children, e.g. 52:54:00")
    .addOption(numberOption("--concurrency <n>", `forks in flight at once (a new pool: ${defaultText(spec.Concurrency)})`, spec.Concurrency, false))
    .addOption(numberOption("--timeout <s>", `deadline for each child from fork to agent-ready, in seconds (a new pool: ${defaultText(spec.ReadyTimeoutS)})`, spec.ReadyTimeoutS, false));
}

/** The engine's pool arguments from the flags, over the pool's current spec when it exists. Throws INVALID_ARGUMENT. */
function poolArgs(verb: string, name: string, o: PoolOpts, current: PoolSpec | undefined): PoolArgs {
  const template = o.template ?? current?.template;
  const size = o.size ?? current?.size;
  if (template === undefined) throw new ForkvmError("INVALID_ARGUMENT", `Cannot ${verb} pool ${name}: --template is required for a new pool`, { details: { field: "template" } });
  if (size === undefined) throw new ForkvmError("INVALID_ARGUMENT", `Cannot ${verb} pool ${name}: --size is required for a new pool`, { details: { field: "size" } });
  return {
    name, template, size,
    persistent: o.persistent ?? current?.persistent,
    prefix: o.prefix ?? current?.prefix,
    macPrefix: o.macPrefix ?? current?.macPrefix,
    metadata: o.metadata === false ? {} : o.metadata ? parseMetadata(o.metadata) : current?.metadata,
    forwards: o.forward === false ? [] : o.forward ? o.forward.map(parsePoolForward) : current?.forwards,
    updatePolicy: o.maxUnavailable !== undefined ? { maxUnavailable: o.maxUnavailable } : current?.updatePolicy,
    concurrency: o.concurrency ?? current?.concurrency,
    readyTimeoutS: o.timeout ?? current?.readyTimeoutS,
    egress: o.egress ?? current?.egress,
    limits: limitsOf(o) ?? current?.limits,
  };
}

function childrenTable(p: PoolInfo): string {
  return table(["child", "index", "status", "generation", "mac", "forwards"], p.children.map((c) => [c.name, c.index, c.status, c.generation || undefined, c.mac || undefined, forwardsText(c.forwards)]));
}

function poolsTable(pools: PoolInfo[]): string {
  return table(["pool", "template", "generation", "size", "ready", "children"], pools.map((p) => [p.name, p.spec.template, p.generation, p.spec.size, p.ready, p.children.map((c) => c.name).join(" ") || undefined]));
}

poolCommand("apply", "create or update a pool: resize, heal dead children, roll to a new template generation (exit 1 if any child failed)")
  .action(action(async (name: string, o: PoolOpts) => {
    const e = engine();
    const args = poolArgs("apply", name, o, e.findPool(name)?.spec);
    const p = progressReporter(Boolean(globals().quiet));
    const r: ApplyResult = await e.withProgress(p.report).applyPool(args).finally(p.done);
    if (globals().json) printJson(r);
    else {
      if (r.children.length) console.log(childrenTable(r));
      console.log(r.lines.length ? r.lines.map((l) => `done: ${l}`).join("\n") : "nothing to do: the pool is as declared");
      console.log(`pool ${r.name}: ${r.ready}/${r.spec.size} ready on generation ${r.generation ?? "-"}`);
    }
    for (const err of r.errors) process.stderr.write(`forkvm: ${err}\n`);
    return r.errors.length ? 1 : 0;
  }));

poolCommand("plan", "what `pool apply` with the same flags would do and cost; changes nothing (exit 1 if the apply would be refused)")
  .action(action((name: string, o: PoolOpts) => {
    const e = engine();
    const r: PoolChange = e.planPool(poolArgs("plan", name, o, e.findPool(name)?.spec));
    if (globals().json) printJson(r);
    else {
      console.log(`pool ${r.name} (${r.exists ? "exists" : "new"}):`);
      console.log(r.lines.length ? r.lines.map((l) => `  ${l}`).join("\n") : "  nothing to do");
      console.log(`estimate: ${r.estimate.summary}`);
    }
    for (const w of r.estimate.warnings) process.stderr.write(`warning: ${w}\n`);
    return r.clashes.length ? 1 : 0;
  }));

poolCmd.command("ls").description("list pools: template, generation, size, children running it")
  .action(action(() => {
    const pools = engine().listPools();
    if (globals().json) return printJson(pools);
    console.log(poolsTable(pools));
  }));

poolCmd.command("inspect <name>").description("everything about one pool (JSON): its spec, generation and every child it owns")
  .action(action((name: string) => {
    printJson(engine().pool(spec.checkName(name, "name", "inspect pool")));
  }));

poolCmd.command("rm <name>").description("remove a pool and the children it owns (nothing else); safe to repeat")
  .action(action(async (name: string) => {
    const removed = await engine().removePool(name);
    const r = { name, kind: removed.length ? "pool" : "absent", removed };
    if (globals().json) return printJson(r);
    console.log(table(["name", "kind", "removed"], [[r.name, r.kind, removed.join(" ") || "(no pool of that name)"]]));
  }));

program.command("gc").description("remove what interrupted operations left (creates whose process died, at once; files of no object, after a minute), finish interrupted starts and captures; damaged and newer manifests are left and reported")
  .action(action(async () => {
    const r = await engine().collect();
    if (globals().json) return printJson(r);
    const lines = [...r.removed.map((x) => `removed ${x}`), ...r.recovered.map((x) => `recovered ${x}`), ...r.left.map((x) => `left ${x.object}: ${x.why}`), ...r.busy.map((x) => `busy ${x} (an operation holds it; run gc again later)`)];
    console.log(lines.length ? lines.join("\n") : "nothing to collect");
  }));

program.parseAsync(process.argv).catch((err) => {
  process.exitCode = reportError(err, Boolean(globals().json));
});
