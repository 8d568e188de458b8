// Template: a ParentVm frozen as a powered-on template (memory image, device checkpoint, base disk),
// immutable files that no longer depend on the parent process. Each capture is a new generation.
// Inputs are the engine's TemplateArgs (engine/spec.ts) with a generated name and a `revision`.
import { z } from "zod";
import { TemplateArgs as EngineTemplateArgs } from "../engine/spec";
import { SdkInputs, Shape, VmName } from "./common";

export const TemplateInputs = EngineTemplateArgs.extend({
  name: VmName.optional().describe("The template's name in the engine. Default: the resource name plus a suffix derived from its URN, so a replacement is created before the old template goes (children roll over to it first)."),
  parent: VmName.describe("The ParentVm to capture: its `id` (or `name`)."),
  revision: z.string().optional().describe("Any value; changing it captures a new generation of the template (needs a `running` parent or a new parent)."),
  ...SdkInputs,
}).strict();
export type TemplateArgs = z.input<typeof TemplateInputs>;
export type TemplateChecked = z.output<typeof TemplateInputs> & { name: string; shape?: Shape };

/** Every input replaces the template: a template is immutable. */
export const TEMPLATE_REPLACE_KEYS = ["name", "parent", "source", "downtimeLimitMs", "revision"] as const;

export const TemplateStatus = z.enum(["ready", "broken"]);

export const TemplateOutputs = TemplateInputs.extend({
  name: VmName.describe("The template's name in the engine; also the resource's id."),
  shape: Shape.describe("Memory, vCPUs, disk and accelerator every child gets."),
  generation: z.string().describe("Identifies this capture; every child records the generation it was forked from."),
  createdAt: z.string().describe("When the template was captured (ISO 8601)."),
  status: TemplateStatus.describe("`broken` when a file is missing or does not match its checksum (see `problems`)."),
  problems: z.array(z.string()).describe("What `read` found wrong with the template's files."),
  stateBytes: z.number().int().describe("Size of the device checkpoint in bytes."),
  downtimeMs: z.number().optional().describe("How long the parent was paused for the capture, in ms."),
  children: z.array(z.string()).describe("Children forked from this template, as last read."),
  home: z.string().describe("The forkvm home (state directory) the resource lives in, recorded when it was created; refresh, update and delete use it."),
}).strict();
export type TemplateOutputs = z.output<typeof TemplateOutputs>;
