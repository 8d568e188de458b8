// The engine's public API: re-exports only.
export { Engine, type EngineOptions, type TemplateInfo } from "./engine";
export { ForkvmError, type ForkvmErrorCode } from "./errors";
export { makeLogger, silentLogger, type Logger, type LogLevel } from "./log";
export type { Progress } from "./context";
export type { VmManifest, TemplateManifest, PoolManifest } from "./state/manifest";
export type { VmInfo, VmStatus, RemoveResult, GcReport, Problem } from "./ops/lifecycle";
export type { ForkResult } from "./ops/fork";
export type { ParentArgs, TemplateArgs, ForkArgs, PoolArgs, PoolSpec } from "./spec";
export type { ApplyResult, PoolChange, PoolChild, PoolInfo, PlanHints } from "./ops/pool";
export type { Estimate, Shape } from "./ops/pool-estimate";
export * as spec from "./spec";
export type { MemoryStats } from "./stats";
export { doctor, type DoctorReport } from "./doctor";
export { buildDefaultImage, loadImage, type GuestImage } from "./image";
export { chooseAccel, type AccelProbe } from "./host";
export { defaultHome, defaultMemDir } from "./state/store";
export { templateProblems } from "./instance/template-files";
