// ParentVm: a VM booted from an image with its applications started and warm, the thing a
// Template freezes. Inputs are the engine's ParentArgs (engine/spec.ts) with a generated name;
// outputs are what the engine made of it.
import { z } from "zod";
import { ForwardSpec, ParentArgs } from "../engine/spec";
import type { VmStatus as EngineVmStatus } from "../engine";
import { ResolvedForward, SdkInputs, Shape, VmName } from "./common";

export const ParentForward = ForwardSpec;

export const ParentVmInputs = ParentArgs.extend({
  name: VmName.optional().describe("The VM's name in the engine (and its hostname). Default: the resource name plus a suffix derived from its URN; a pinned name is deleted before it is replaced."),
  ...SdkInputs,
}).strict();
/** What a program passes (defaults optional). */
export type ParentVmArgs = z.input<typeof ParentVmInputs>;
/** The inputs after check: defaults applied, name generated. */
export type ParentVmChecked = z.output<typeof ParentVmInputs> & { name: string; shape: Shape };

/** Properties whose change replaces the parent: everything that shaped the running guest. */
export const PARENT_REPLACE_KEYS = ["name", "image", "kernel", "initrd", "cmdline", "memoryMiB", "vcpus", "diskMiB", "diskImage", "init", "forwards", "nic", "macPrefix", "accel"] as const;
/** Properties that change in place (they only matter while booting). */
export const PARENT_UPDATE_KEYS = ["bootTimeoutS"] as const;

/** The engine's statuses (engine/state/transitions.ts) plus `missing`: a VM the state knows and the engine no longer has. */
export const VmStatus = z.enum(["creating", "starting", "running", "paused", "stopped", "crashed", "abandoned", "interrupted", "consumed", "missing"]);
export type VmStatus = z.infer<typeof VmStatus>;
// Every status the engine reports is one the schema knows: a new engine status fails the type-check here.
export const STATUSES_COVER_ENGINE: Exclude<EngineVmStatus, VmStatus> extends never ? true : never = true;

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
  home: z.string().describe("The forkvm home (state directory) the resource lives in, recorded when it was created; refresh, update and delete use it."),
}).strict();
export type ParentVmOutputs = z.output<typeof ParentVmOutputs>;
