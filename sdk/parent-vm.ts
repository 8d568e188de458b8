// ParentVm: a VM booted from an image with its applications started and warm (`init`), the
// thing a Template freezes. `new ParentVm("web", { memoryMiB: 256, init: ["..."] })`.
import * as pulumi from "@pulumi/pulumi";
import type { ParentVmArgs as SchemaArgs, ParentVmOutputs, VmStatus } from "../schema/parent-vm";
import type { ResolvedForward, Shape } from "../schema/common";
import { parentVmProvider } from "../provider/serialisable";
import { hiddenInputs, keepSecret, remember, secretPaths, seed, type Inputs, type Public } from "./common";

export type ParentVmArgs = Omit<Inputs<Public<SchemaArgs>>, "init"> & {
  /**
   * Shell commands run in the guest, in order, before the parent counts as ready. Any of them
   * (or the whole list) may be a Pulumi secret: forkvm then keeps it out of progress lines, log
   * messages, errors and plaintext outputs.
   */
  init?: pulumi.Input<pulumi.Input<string>[]>;
};

const OUTPUTS = ["home", "name", "shape", "status", "pid", "mac", "hostname", "ports", "machine", "accelUsed", "createdAt", "bootMs", "initMs", "templates", "memoryMiB", "vcpus", "diskMiB", "init"] as const satisfies ReadonlyArray<keyof ParentVmOutputs>;

export class ParentVm extends pulumi.dynamic.Resource {
  /** The forkvm home (state directory) the parent lives in: `forkvm:home`, else FORKVM_HOME or the default, when it was created. */
  declare readonly home: pulumi.Output<string>;
  /** The VM's name in the engine (`forkvm exec <name> ...`); equal to `id`. */
  declare readonly name: pulumi.Output<string>;
  /** Memory, vCPUs, disk and accelerator; known during preview. */
  declare readonly shape: pulumi.Output<Shape>;
  /** `running`, `crashed`, `stopped`, or `consumed` once a frozen Template took it. */
  declare readonly status: pulumi.Output<VmStatus>;
  declare readonly pid: pulumi.Output<number | undefined>;
  declare readonly mac: pulumi.Output<string>;
  declare readonly hostname: pulumi.Output<string>;
  /** Port forwards as they run: 127.0.0.1:host → guest. */
  declare readonly ports: pulumi.Output<ResolvedForward[]>;
  declare readonly machine: pulumi.Output<string>;
  /** The accelerator the parent runs on (what `accel: auto` chose). */
  declare readonly accelUsed: pulumi.Output<"kvm" | "tcg">;
  declare readonly createdAt: pulumi.Output<string>;
  declare readonly bootMs: pulumi.Output<number | undefined>;
  declare readonly initMs: pulumi.Output<number | undefined>;
  /** Templates taken of this parent. */
  declare readonly templates: pulumi.Output<string[]>;
  declare readonly memoryMiB: pulumi.Output<number>;
  declare readonly vcpus: pulumi.Output<number>;
  declare readonly diskMiB: pulumi.Output<number>;
  declare readonly init: pulumi.Output<string[]>;

  constructor(name: string, args: ParentVmArgs = {}, opts?: pulumi.CustomResourceOptions) {
    const secrets = secretPaths(args);
    super(parentVmProvider, name, { ...seed(OUTPUTS), ...args, ...hiddenInputs(name, "ParentVm", opts, args, secrets) }, opts, "forkvm", "ParentVm");
    keepSecret(this, args, secrets);
    remember(this, this.id, this.name);
  }
}
