// The `forkvm` command line: one sub-command per engine operation; tables for people,
// --json for machines; progress and warnings on stderr.
import * as net from "node:net";
import { Command, InvalidArgumentError, Option } from "commander";
import { Engine } from "../engine/engine";
import { doctor } from "../engine/doctor";
import { buildDefaultImage } from "../engine/image";
import { vmPaths } from "../engine/qemu/argv";
import { cliLogger, printJson, progressReporter, reportError, table } from "./output";
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

function int(name: string, min: number, max: number) {
  return (v: string) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min || n > max) throw new InvalidArgumentError(`${name} must be a whole number from ${min} to ${max}`);
    return n;
  };
}

function collect(v: string, prev: string[] = []) {
  return [...prev, v];
}

/** --forward GUEST or HOST:GUEST, optionally /udp. */
function parseForward(spec: string) {
  const m = spec.match(/^(?:(\d+):)?(\d+)(?:\/(tcp|udp))?$/);
  if (!m) throw new ForkvmError("INVALID_ARGUMENT", `Cannot parse --forward ${spec}: expected GUEST or HOST:GUEST, optionally /tcp or /udp`, { details: { field: "forwards" } });
  return { host: m[1] ? Number(m[1]) : undefined, guest: Number(m[2]), proto: (m[3] ?? "tcp") as "tcp" | "udp" };
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
      ["guest image", r.image.error ?? `${r.image.name}: kernel ${r.image.kernelVersion}, needs ${r.image.minMemoryMiB} MiB`],
    ];
    console.log(table(["check", "result"], lines));
    if (!("error" in r.accel) && r.accel.warning) process.stderr.write(`warning: ${r.accel.warning}\n`);
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
parent.command("create <name>").description("boot a parent VM and run its init commands")
  .option("--memory <MiB>", "guest memory", int("--memory", 32, 1048576), 256)
  .option("--vcpus <n>", "virtual CPUs", int("--vcpus", 1, 64), 1)
  .option("--disk <MiB>", "size of a new data disk (0: none)", int("--disk", 0, 67108864), 256)
  .option("--disk-image <path>", "use this qcow2/raw image as the base of the data disk")
  .option("--init <cmd>", "shell command run in the guest before it counts as ready (repeatable)", collect, [])
  .option("--forward <[host:]guest>", "forward a port on 127.0.0.1 to the guest (repeatable)", collect, [])
  .option("--no-nic", "no network card")
  .option("--mac-prefix <octets>", "MAC prefix, e.g. 52:54:00")
  .addOption(new Option("--accel <accel>", "accelerator").choices(["auto", "kvm", "tcg"]).default("auto"))
  .option("--kernel <path>", "bring your own kernel (with --initrd)")
  .option("--initrd <path>", "bring your own initrd (with --kernel)")
  .option("--cmdline <text>", "kernel command line for your own kernel")
  .option("--timeout <s>", "deadline for boot and init", int("--timeout", 1, 3600), 300)
  .action(action(async (name: string, o: Record<string, any>) => {
    const p = progressReporter(Boolean(globals().quiet));
    const vm = await engine().withProgress(p.report).createParent({
      name, memoryMiB: o.memory, vcpus: o.vcpus, diskMiB: o.disk, diskImage: o.diskImage, init: o.init,
      forwards: o.forward.map(parseForward), nic: o.nic, macPrefix: o.macPrefix, accel: o.accel,
      kernel: o.kernel, initrd: o.initrd, cmdline: o.cmdline, bootTimeoutS: o.timeout,
    }).finally(p.done);
    if (globals().json) return printJson(vm);
    console.log(table(["parent", "status", "accel", "memory", "boot", "init", "forwards"], [[vm.name, vm.status, vm.shape.accel, mb(vm.shape.memoryMiB), ms(vm.timings?.bootMs), ms(vm.timings?.initMs), vm.forwards.map((f) => `127.0.0.1:${f.host}->${f.guest}/${f.proto}`).join(" ") || "-"]]));
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

program.command("fork <template>").description("fork running children from a template")
  .option("--count <n>", "how many children", int("--count", 1, 10000), 1)
  .option("--prefix <prefix>", "children are named <prefix>-<n> (default: the template's name)")
  .option("--persistent", "children keep their delta disk across stop/start")
  .option("--full", "full clones: own copies of memory and disk, independent of the template (slower, no sharing)")
  .option("--concurrency <n>", "forks in flight at once", int("--concurrency", 1, 256), 4)
  .option("--forward <[host:]guest>", "forward a port to each child (host port picked per child)", collect, [])
  .option("--mac-prefix <octets>", "MAC prefix, e.g. 52:54:00")
  .action(action(async (tname: string, o: Record<string, any>) => {
    const p = progressReporter(Boolean(globals().quiet));
    const r = await engine().withProgress(p.report).fork({
      template: tname, count: o.count, prefix: o.prefix, persistent: Boolean(o.persistent), clone: o.full ? "full" : "linked", concurrency: o.concurrency,
      forwards: o.forward.map(parseForward), macPrefix: o.macPrefix,
    }).finally(p.done);
    if (globals().json) printJson({ children: r.children, failed: r.failed.map((f) => ({ name: f.name, code: f.error.code, message: f.error.message })) });
    else {
      console.log(table(["child", "pid", "mac", "hostname", "running", "ready", "forwards"], r.children.map((c) => [c.name, c.pid, c.mac, c.hostname, ms(c.timings?.runningMs), ms(c.timings?.readyMs), c.forwards.map((f) => `127.0.0.1:${f.host}->${f.guest}`).join(" ") || "-"])));
      for (const f of r.failed) process.stderr.write(`forkvm: ${f.error.message}\n`);
    }
    return r.failed.length ? 1 : 0;
  }));

program.command("ls").description("list VMs and templates (status reconciled with live processes)")
  .action(action(() => {
    const e = engine();
    const vms = e.listVms();
    const templates = e.listTemplates();
    if (globals().json) return printJson({ vms, templates });
    console.log(table(["name", "role", "status", "pid", "template", "generation", "mac", "memory", "persistent"], vms.map((v) => [v.name, v.role, v.status, v.status === "running" ? v.pid : undefined, v.template?.name, v.template?.generation, v.mac, mb(v.shape.memoryMiB), v.role === "child" ? String(Boolean(v.persistent)) : undefined])));
    if (templates.length) console.log(table(["template", "generation", "source", "parent", "children", "created"], templates.map((t) => [t.name, t.generation, t.source, t.parent, t.children.length, t.createdAt])));
  }));

program.command("inspect <name>").description("everything about one VM or template (JSON)")
  .action(action((name: string) => {
    const r = engine().inspect(name);
    printJson(r.kind === "vm" ? r.vm : r.template);
  }));

program.command("exec <vm> <argv...>").description("run a command in the guest: forkvm exec VM -- CMD ARGS... (no shell involved)")
  .option("--timeout <s>", "deadline for the command", int("--timeout", 1, 86400), 60)
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

program.command("rm <names...>").description("remove VMs and templates (a template with children needs --force, which removes them too)")
  .option("--force", "also remove a template's children")
  .action(action(async (names: string[], o: { force?: boolean }) => {
    const r = await engine().remove(names, { force: o.force });
    if (globals().json) return printJson(r);
    console.log(table(["name", "kind", "removed"], r.map((x) => [x.name, x.kind, x.removed.join(" ") || "(nothing there)"])));
  }));

program.command("gc").description("remove leftovers of interrupted operations (older than a minute)")
  .action(action(async () => {
    const r = await engine().gc();
    if (globals().json) return printJson(r);
    console.log(r.length ? r.join("\n") : "nothing to collect");
  }));

program.parseAsync(process.argv).catch((err) => {
  process.exitCode = reportError(err, Boolean(globals().json));
});
