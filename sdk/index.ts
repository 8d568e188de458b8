// What users import: `import { ParentVm, Template, InstantClonePool } from "forkvm"`.
export { ParentVm, type ParentVmArgs } from "./parent-vm";
export { Template, type TemplateArgs } from "./template";
export { InstantClonePool, type InstantClonePoolArgs, type Child, type Estimate } from "./instant-clone-pool";
export type { ResolvedForward, Shape } from "../schema/common";
export type { VmStatus } from "../schema/parent-vm";
