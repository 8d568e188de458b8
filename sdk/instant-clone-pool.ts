// InstantClonePool: a fleet of running children forked from a Template, kept as declared.
// `new InstantClonePool("web-pool", { template: tmpl.id, size: 20, persistent: false })`.
// During preview and up it logs the fleet's cost estimate and the update's plan on itself.
import * as pulumi from "@pulumi/pulumi";
import type { Child, Estimate, InstantClonePoolArgs as SchemaArgs, InstantClonePoolOutputs } from "../schema/instant-clone-pool";
import { instantClonePoolProvider } from "../provider/serialisable";
import { hiddenInputs, keepSecret, recall, remember, secretPaths, seed, type Inputs, type Public } from "./common";
import { Template } from "./template";

export type InstantClonePoolArgs = Omit<Inputs<Public<SchemaArgs>>, "template" | "metadata"> & {
  /** The template: the Template itself, its `id` or `name`, or the name of a template in the engine. */
  template: pulumi.Input<string> | Template;
  /**
   * Key/value pairs handed to each child's guest (/etc/forkvm/metadata and metadata.json). Any
   * value (or the whole map) may be a Pulumi secret: forkvm then keeps it out of progress lines,
   * log messages, errors and plaintext outputs.
   */
  metadata?: pulumi.Input<Record<string, pulumi.Input<string>>>;
};

export type { Child, Estimate };

const OUTPUTS = ["home", "metadata", "namePrefix", "template", "size", "persistent", "estimate", "plan", "children", "generation", "ready"] as const satisfies ReadonlyArray<keyof InstantClonePoolOutputs>;

export class InstantClonePool extends pulumi.dynamic.Resource {
  /** The forkvm home (state directory) the pool lives in, recorded when it was created. */
  declare readonly home: pulumi.Output<string>;
  declare readonly metadata: pulumi.Output<Record<string, string>>;
  /** Children are named `<namePrefix>-<n>`; equal to `id`. */
  declare readonly namePrefix: pulumi.Output<string>;
  declare readonly template: pulumi.Output<string>;
  declare readonly size: pulumi.Output<number>;
  declare readonly persistent: pulumi.Output<boolean>;
  /** Memory shared with the template vs private per child, and delta disks; known during preview. */
  declare readonly estimate: pulumi.Output<Estimate>;
  /** What the next update does (preview); empty once applied. */
  declare readonly plan: pulumi.Output<string[]>;
  /** Every child: name, vmId, mac, hostname, generation, pid, status, forwards. */
  declare readonly children: pulumi.Output<Child[]>;
  /** The template generation the pool runs (or rolls to). */
  declare readonly generation: pulumi.Output<string>;
  /** Children running the declared generation. */
  declare readonly ready: pulumi.Output<number>;

  constructor(name: string, args: InstantClonePoolArgs, opts?: pulumi.CustomResourceOptions) {
    // With the Template at hand, pass its name and shape: both are known during preview, its id
    // is not, so the preview can name the template it rolls to and estimate the cost.
    const template = recall(args.template, Template);
    const secrets = secretPaths(args);
    const props = {
      ...seed(OUTPUTS),
      ...args,
      template: template ? template.name : (args.template as pulumi.Input<string>),
      __shape: template?.shape,
      ...hiddenInputs(name, "InstantClonePool", opts, args, secrets),
    };
    super(instantClonePoolProvider, name, props, opts, "forkvm", "InstantClonePool");
    keepSecret(this, args, secrets);
    remember(this, this.id, this.namePrefix);
    // Where the user sees it: a message on this resource, during preview (the estimate and plan
    // come from check, so they are known before anything runs) and during up.
    pulumi.all([this.estimate, this.plan]).apply(([estimate, plan]) => {
      if (!estimate) return;
      void pulumi.log.info(`estimate: ${estimate.summary}`, this);
      for (const w of estimate.warnings ?? []) void pulumi.log.warn(w, this);
      if (plan?.length) void pulumi.log.info(`plan: ${plan.join("; ")}`, this);
    });
  }
}
