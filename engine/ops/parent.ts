// Boot a parent: a VM whose memory lives in a tmpfs file mapped shared (so it can be frozen
// into a template without copying), with a qcow2 disk, a NIC, and `init` commands run in the
// guest before it counts as ready.
import * as fs from "node:fs";
import * as path from "node:path";
import type { z } from "zod";
import { ForkvmError } from "../errors";
import type { Ctx } from "../context";
import type { VmManifest } from "../state/manifest";
import { chooseAccel, fsInfo, resolveMachine, type AccelChoice } from "../host";
import { loadImage } from "../image";
import type { MachineShape, PortForward } from "../qemu/argv";
import { createDisk } from "../qemu/process";
import { ForwardSpec, ParentArgs, parseArgs } from "../spec";
import { Undo } from "../undo";
import { pickPort } from "../net/ports";
import { hostnameFor, newToken, randomMac } from "../instance/identity";
import { bootVm } from "../instance/boot";

export { ParentArgs };

/** The kernel command line for a kernel the user brings without one: the console on the serial port. */
export const USER_KERNEL_CMDLINE = "console=ttyS0 panic=-1";

/**
 * Resolves host ports: asked ones as given, 0/absent to a free one marked `auto` (leased by this
 * process, and moved by launch when another program took it meanwhile: engine/net/ports.ts).
 */
export async function resolveForwards(specs: z.output<typeof ForwardSpec>[]): Promise<PortForward[]> {
  const out: PortForward[] = [];
  for (const f of specs) out.push(f.host ? { guest: f.guest, proto: f.proto, host: f.host } : { guest: f.guest, proto: f.proto, host: await pickPort(), auto: true });
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
    const kernelArgs: string[] = [];
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
      forwards: await resolveForwards(args.forwards), egress: args.egress, init: args.init, startedBy: "boot", timings: {},
      ...(args.limits ? { limits: args.limits } : {}),
    };
    store.writeVm(vm);
    await bootVm(ctx, vm, args.bootTimeoutS * 1000, undo, kernelArgs);
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
