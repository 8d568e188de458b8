// The engine's public API: re-exports only.
export { Engine, type EngineOptions, type TemplateInfo } from "./engine";
export { ForkvmError, type ForkvmErrorCode } from "./errors";
export { makeLogger, silentLogger, type Logger, type LogLevel } from "./log";
export type { Progress } from "./context";
export type { VmManifest, TemplateManifest } from "./manifest";
export type { VmInfo, VmStatus, RemoveResult } from "./lifecycle";
export type { ForkResult, ForkArgs } from "./fork";
export type { ParentArgs } from "./parent";
export type { TemplateArgs } from "./template";
export type { MemoryStats } from "./stats";
export { doctor, type DoctorReport } from "./doctor";
export { buildDefaultImage, loadImage, type GuestImage } from "./image";
export { chooseAccel, type AccelProbe } from "./host";
export { defaultHome, defaultMemDir } from "./store";
