// ParentVm: a VM booted from an image with its applications started and warm, the thing a
// Template freezes. Inputs mirror the engine's ParentArgs; outputs are what the engine made of it.
import { z } from "zod";
import { Accel, MacPrefix, Port, Proto, ResolvedForward, SdkInputs, Shape, VmName } from "./common";

export const ParentForward = z
  .object({
    guest: Port.describe("Port inside the guest."),
    host: z.number().int().min(0).max(65535).optional().describe("Port on 127.0.0.1; 0 or absent picks a free one."),
    proto: Proto.default("tcp").describe("`tcp` or `udp`."),
  })
  .strict();

export const ParentVmInputs = z
  .object({
    name: VmName.optional().describe("The VM's name in the engine (and its hostname). Default: the resource name plus a random suffix; a pinned name is deleted before it is replaced."),
    image: z.string().min(1).default("default").describe("A guest image built with `forkvm image build`."),
    kernel: z.string().min(1).optional().describe("Bring your own kernel instead of the image (with `initrd`)."),
    initrd: z.string().min(1).optional().describe("Bring your own initramfs instead of the image (with `kernel`)."),
    cmdline: z.string().optional().describe("Kernel command line; default: the image's."),
    memoryMiB: z.number().int("must be an integer").min(32, "must be at least 32").max(1024 * 1024).default(256).describe("Guest memory in MiB; at least the image's minimum (image.json `minMemoryMiB`). Every child maps it copy-on-write."),
    vcpus: z.number().int("must be an integer").min(1, "must be at least 1").max(64, "must be at most 64").default(1).describe("Virtual CPUs."),
    diskMiB: z.number().int("must be an integer").min(0, "must be at least 0").max(64 * 1024 * 1024).default(256).describe("Size of a new empty data disk (ext4, /data in the default image); 0 for none. Ignored with `diskImage`."),
    diskImage: z.string().min(1).optional().describe("An existing qcow2 or raw disk image; the parent writes to an overlay, never to it."),
    init: z.array(z.string().min(1, "must not be empty")).default([]).describe("Shell commands run in the guest, in order, before the parent counts as ready (start and warm your applications here)."),
    forwards: z.array(ParentForward).default([]).describe("Port forwards from 127.0.0.1 to the parent."),
    nic: z.boolean().default(true).describe("Give the VM a virtio NIC (user-mode networking)."),
    macPrefix: MacPrefix.optional().describe("MAC prefix of the parent's NIC, 1 to 5 octets."),
    accel: Accel.default("auto").describe("`auto` probes KVM and falls back to TCG when KVM cannot run guest kernels at speed."),
    bootTimeoutS: z.number().int().min(1).max(3600).default(300).describe("How long the boot plus the init commands may take, in seconds."),
    ...SdkInputs,
  })
  .strict();
/** What a program passes (defaults optional). */
export type ParentVmArgs = z.input<typeof ParentVmInputs>;
/** The inputs after check: defaults applied, name generated. */
export type ParentVmChecked = z.output<typeof ParentVmInputs> & { name: string; shape: Shape };

/** Properties whose change replaces the parent: everything that shaped the running guest. */
export const PARENT_REPLACE_KEYS = ["name", "image", "kernel", "initrd", "cmdline", "memoryMiB", "vcpus", "diskMiB", "diskImage", "init", "forwards", "nic", "macPrefix", "accel"] as const;
/** Properties that change in place (they only matter while booting). */
export const PARENT_UPDATE_KEYS = ["bootTimeoutS"] as const;

export const VmStatus = z.enum(["creating", "running", "stopped", "crashed", "consumed", "missing"]);
export type VmStatus = z.infer<typeof VmStatus>;

export const ParentVmOutputs = ParentVmInputs.extend({
  name: VmName.describe("The VM's name in the engine; also the resource's id."),
  shape: Shape.describe("Memory, vCPUs, disk and accelerator: what a Template of this parent passes on."),
  status: VmStatus.describe("The engine's status reconciled with the process: `consumed` after a `frozen` template took it."),
  pid: z.number().int().optional().describe("QEMU's pid while it runs."),
  mac: z.string().describe("The NIC's MAC address."),
  hostname: z.string().describe("The guest's hostname."),
  ports: z.array(ResolvedForward).describe("The forwards as they run, with the host ports chosen."),
  machine: z.string().describe("The versioned QEMU machine type, e.g. pc-i440fx-7.2."),
  accelUsed: z.enum(["kvm", "tcg"]).describe("The accelerator the parent runs on (what `auto` chose)."),
  createdAt: z.string().describe("When the engine created the VM (ISO 8601)."),
  bootMs: z.number().optional().describe("Boot time to agent-ready, in ms."),
  initMs: z.number().optional().describe("Time the init commands took, in ms."),
  templates: z.array(z.string()).describe("Templates taken of this parent."),
}).strict();
export type ParentVmOutputs = z.output<typeof ParentVmOutputs>;
