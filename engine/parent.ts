// Boot a parent: a VM whose memory lives in a tmpfs file mapped shared (so it can be frozen
// into a template without copying), with a qcow2 disk, a NIC, and `init` commands run in the
// guest before it counts as ready.
import * as fs from "node:fs";
import * as path from "node:path";
import { z } from "zod";
import { ForkvmError } from "./errors";
import type { Ctx } from "./context";
import { Name, type VmManifest } from "./manifest";
import { chooseAccel, fsInfo, resolveMachine, type AccelChoice } from "./host";
import { loadImage } from "./image";
import type { MachineShape, PortForward } from "./qemu/argv";
import { createDisk, isAlive, killQemu, tail } from "./qemu/process";
import { vmPaths } from "./qemu/argv";
import { parseArgs } from "./validate";
import { Undo } from "./undo";
import { agentFor, freePort, hostnameFor, MAC_PREFIX_RE, newToken, qemuFailure, randomMac, startInstance } from "./vm";

export const ForwardSpec = z.object({
  guest: z.number().int().min(1).max(65535),
  /** Host port on 127.0.0.1; 0 or absent picks a free one. */
  host: z.number().int().min(0).max(65535).optional(),
  proto: z.enum(["tcp", "udp"]).default("tcp"),
}).strict();

export const ParentArgs = z.object({
  name: Name,
  /** A built image from the cache (`forkvm image build`), or bring your own kernel + initrd. */
  image: z.string().default("default"),
  kernel: z.string().optional(),
  initrd: z.string().optional(),
  cmdline: z.string().optional(),
  memoryMiB: z.number().int().min(32).max(1024 * 1024).default(256),
  vcpus: z.number().int().min(1).max(64).default(1),
  /** Size of a new empty data disk; 0 for none. Ignored when diskImage is given. */
  diskMiB: z.number().int().min(0).max(64 * 1024 * 1024).default(256),
  /** An existing qcow2 or raw disk image; the parent writes to an overlay, never to it. */
  diskImage: z.string().optional(),
  init: z.array(z.string().min(1)).default([]),
  forwards: z.array(ForwardSpec).default([]),
  nic: z.boolean().default(true),
  macPrefix: z.string().regex(MAC_PREFIX_RE, "1 to 5 hex octets separated by ':', e.g. 52:54:00").optional(),
  accel: z.enum(["auto", "kvm", "tcg"]).default("auto"),
  /** How long the boot plus the init commands may take. */
  bootTimeoutS: z.number().int().min(1).max(3600).default(300),
}).strict();
export type ParentArgs = z.input<typeof ParentArgs>;

/** The kernel command line for a kernel the user brings without one: the console on the serial port. */
export const USER_KERNEL_CMDLINE = "console=ttyS0 panic=-1";

/** Resolves host ports: asked ones as given, 0/absent to a free one. */
export async function resolveForwards(specs: z.infer<typeof ForwardSpec>[]): Promise<PortForward[]> {
  const out: PortForward[] = [];
  for (const f of specs) out.push({ guest: f.guest, proto: f.proto, host: f.host || (await freePort()) });
  return out;
}

/**
 * Boots a parent VM and runs its init commands. Throws INVALID_ARGUMENT (field named),
 * ALREADY_EXISTS, NOT_FOUND (image), HOST, QEMU (with QEMU's stderr), AGENT (an init command
 * failed: its stderr) or TIMEOUT. A failed create leaves nothing behind.
 */
export async function createParent(ctx: Ctx, input: ParentArgs): Promise<VmManifest> {
  const args = parseArgs(ParentArgs, input, "create parent");
  const { store } = ctx;
  const log = ctx.log.child({ vm: args.name });
  const image = args.kernel || args.initrd ? undefined : await loadImage(args.image);
  if ((args.kernel && !args.initrd) || (!args.kernel && args.initrd)) {
    throw new ForkvmError("INVALID_ARGUMENT", "Cannot create parent: kernel and initrd go together", { details: { field: args.kernel ? "initrd" : "kernel" } });
  }
  if (image && args.memoryMiB < image.minMemoryMiB) {
    throw new ForkvmError("INVALID_ARGUMENT", `Cannot create parent ${args.name}: memoryMiB ${args.memoryMiB} is below the ${image.minMemoryMiB} MiB image ${image.name} needs`, { details: { field: "memoryMiB", min: image.minMemoryMiB } });
  }
  for (const [field, file] of [["kernel", args.kernel], ["initrd", args.initrd], ["diskImage", args.diskImage]] as const) {
    if (file && !fs.existsSync(file)) throw new ForkvmError("INVALID_ARGUMENT", `Cannot create parent ${args.name}: ${field} ${file} does not exist`, { details: { field } });
  }
  store.init();
  const tmpfs = fsInfo(store.memDir);
  if (tmpfs.freeMiB < args.memoryMiB) {
    throw new ForkvmError("HOST", `Cannot create parent ${args.name}: ${store.memDir} has ${tmpfs.freeMiB} MiB free, the parent needs ${args.memoryMiB} MiB`);
  }
  const probe = await chooseAccel(args.accel as AccelChoice, path.join(store.home, "host-probe.json"));
  if (probe.warning) log.log("warn", probe.warning, { reason: probe.reason });

  const dir = store.reserve("vms", args.name);
  const undo = new Undo(log);
  undo.push("remove VM directory", () => store.remove("vms", args.name));
  try {
    const shape: MachineShape = {
      accel: probe.accel,
      machine: await resolveMachine("pc"),
      cpu: probe.accel === "kvm" ? "host" : undefined,
      memoryMiB: args.memoryMiB,
      vcpus: args.vcpus,
      kernel: path.resolve(args.kernel ?? image!.kernel),
      initrd: path.resolve(args.initrd ?? image!.initrd),
      cmdline: args.cmdline ?? image?.cmdline ?? USER_KERNEL_CMDLINE,
      disk: Boolean(args.diskImage) || args.diskMiB > 0,
      nic: args.nic,
    };
    let diskPath: string | undefined;
    const kernelArgs = [`forkvm.hostname=${hostnameFor(args.name)}`];
    if (shape.disk) {
      diskPath = path.join(dir, "disk.qcow2");
      if (args.diskImage) {
        const fmt = args.diskImage.endsWith(".qcow2") ? "qcow2" : "raw";
        await createDisk(diskPath, { backing: path.resolve(args.diskImage), backingFormat: fmt });
      } else {
        await createDisk(diskPath, { sizeMiB: args.diskMiB });
        kernelArgs.push("forkvm.mkfs=1");
      }
    }
    const token = newToken();
    const memoryPath = store.memoryPath("vms", args.name);
    const vm: VmManifest = {
      version: 1, kind: "vm", name: args.name, role: "parent", createdAt: new Date().toISOString(), state: "creating",
      shape, token, memoryPath, diskPath, mac: randomMac(args.macPrefix), hostname: hostnameFor(args.name),
      forwards: await resolveForwards(args.forwards), init: args.init, startedBy: "boot", timings: {},
    };
    store.writeVm(vm);
    await bootVm(ctx, vm, kernelArgs, args.bootTimeoutS * 1000, undo);
    const initStart = Date.now();
    const agent = agentFor(dir);
    try {
      for (const [i, cmd] of args.init.entries()) {
        ctx.progress?.({ step: "init", message: cmd, done: i, total: args.init.length });
        const r = await agent.exec(["sh", "-c", cmd], { timeoutMs: args.bootTimeoutS * 1000 });
        if (r.exitCode !== 0) {
          throw new ForkvmError("AGENT", `Cannot run init command ${i + 1} of parent ${args.name} (${JSON.stringify(cmd)}): exit ${r.exitCode}: ${r.stderr.toString().trim().slice(-500)}`, {
            details: { field: `init[${i}]`, exitCode: r.exitCode, stderr: r.stderr.toString() },
          });
        }
      }
    } finally {
      agent.close();
    }
    vm.timings = { ...vm.timings, initMs: Date.now() - initStart };
    vm.state = "running";
    store.writeVm(vm);
    undo.commit();
    log.log("info", "parent ready", { pid: vm.pid, ...vm.timings });
    return vm;
  } catch (err) {
    await undo.run();
    throw err;
  }
}

/**
 * Cold-boots `vm` from its kernel and disk (parents, and persistent children after a stop):
 * its own shared memory file, a new QEMU token, then waits for the guest agent.
 * Updates `vm` (pid, token, timings) and its manifest. Registers the kill in `undo`.
 */
export async function bootVm(ctx: Ctx, vm: VmManifest, kernelArgs: string[], deadlineMs: number, undo: Undo): Promise<void> {
  const dir = ctx.store.dir("vms", vm.name);
  const start = Date.now();
  ctx.progress?.({ step: "boot", message: `booting ${vm.name} (${vm.shape.accel})` });
  vm.token = newToken();
  vm.memoryPath = ctx.store.memoryPath("vms", vm.name);
  fs.rmSync(vm.memoryPath, { force: true });
  const { pid, qmp } = await startInstance(vm.shape, {
    token: vm.token, dir, memory: { path: vm.memoryPath, share: true }, diskPath: vm.diskPath,
    mac: vm.mac, forwards: vm.forwards, kernelArgs,
  });
  qmp.close();
  const token = vm.token;
  undo.push("kill QEMU", () => killQemu(pid, token));
  undo.push("remove memory file", () => fs.rmSync(vm.memoryPath, { force: true }));
  vm.pid = pid;
  vm.startedBy = "boot";
  ctx.store.writeVm(vm);
  const agent = agentFor(dir);
  try {
    await agent.waitReady(Math.max(1000, deadlineMs - (Date.now() - start)), () => isAliveVm(vm));
  } catch (err) {
    if (isAliveVm(vm)) {
      // QEMU runs but the guest never answered: what the guest printed says why.
      const console = tail(vmPaths(dir).consoleLog, 10);
      throw new ForkvmError("TIMEOUT", `Cannot boot VM ${vm.name} to agent-ready: ${(err as Error).message}${console ? `; console ends with: ${console.split("\n").slice(-3).join(" | ")}` : ""}`, { cause: err, details: { console } });
    }
    throw qemuFailure(dir, `boot VM ${vm.name} to agent-ready`, err);
  } finally {
    agent.close();
  }
  vm.timings = { ...vm.timings, bootMs: Date.now() - start };
}

function isAliveVm(vm: VmManifest): boolean {
  return isAlive(vm.pid, vm.token);
}
