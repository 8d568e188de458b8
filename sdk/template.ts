// Template: a ParentVm frozen as a powered-on template; every capture is a new generation.
// `new Template("web-t", { parent: parent.id, source: "frozen" })`.
import * as pulumi from "@pulumi/pulumi";
import type { TemplateArgs as SchemaArgs, TemplateOutputs } from "../schema/template";
import type { Shape } from "../schema/common";
import { templateProvider } from "../provider/serialisable";
import { hiddenInputs, keepSecret, recall, remember, secretPaths, seed, type Inputs, type Public } from "./common";
import { ParentVm } from "./parent-vm";

export type TemplateArgs = Omit<Inputs<Public<SchemaArgs>>, "parent"> & {
  /** The parent: the ParentVm itself, its `id` or `name`, or the name of a VM in the engine. */
  parent: pulumi.Input<string> | ParentVm;
};

const OUTPUTS = ["home", "name", "parent", "source", "shape", "generation", "createdAt", "status", "problems", "stateBytes", "downtimeMs", "children"] as const satisfies ReadonlyArray<keyof TemplateOutputs>;

export class Template extends pulumi.dynamic.Resource {
  /** The forkvm home (state directory) the template lives in, recorded when it was created. */
  declare readonly home: pulumi.Output<string>;
  /** The template's name in the engine; equal to `id` (known during preview). */
  declare readonly name: pulumi.Output<string>;
  declare readonly parent: pulumi.Output<string>;
  declare readonly source: pulumi.Output<"frozen" | "running">;
  /** Memory, vCPUs, disk and accelerator every child gets; known during preview. */
  declare readonly shape: pulumi.Output<Shape>;
  /** Identifies this capture; children record the generation they were forked from. */
  declare readonly generation: pulumi.Output<string>;
  declare readonly createdAt: pulumi.Output<string>;
  /** `ready`, or `broken` when `read` found a file missing (see `problems`). */
  declare readonly status: pulumi.Output<"ready" | "broken">;
  declare readonly problems: pulumi.Output<string[]>;
  declare readonly stateBytes: pulumi.Output<number>;
  /** How long the parent was paused for the capture, ms. */
  declare readonly downtimeMs: pulumi.Output<number | undefined>;
  /** Children forked from this template, as last read. */
  declare readonly children: pulumi.Output<string[]>;

  constructor(name: string, args: TemplateArgs, opts?: pulumi.CustomResourceOptions) {
    // With the ParentVm at hand, pass its name and shape: both are known during preview, its id is not.
    const parent = recall(args.parent, ParentVm);
    const secrets = secretPaths(args);
    const props = {
      ...seed(OUTPUTS),
      ...args,
      parent: parent ? parent.name : (args.parent as pulumi.Input<string>),
      __shape: parent?.shape,
      ...hiddenInputs(name, "Template", opts, args, secrets),
    };
    super(templateProvider, name, props, opts, "forkvm", "Template");
    keepSecret(this, args, secrets);
    remember(this, this.id, this.name);
  }
}
