// Small helpers of the providers: JSON-clean values for gRPC, property paths as users write
// them, name checks against the engine.
import type { Engine } from "../engine";

/** Renders a path the way users write it (and the engine names fields): forwards[0].guest. */
export function pathString(path: readonly PropertyKey[]): string {
  let out = "";
  for (const p of path) out += typeof p === "number" ? `[${p}]` : out ? `.${String(p)}` : String(p);
  return out;
}

/**
 * A copy holding only JSON values: Pulumi's Struct encoding rejects `undefined`, so every
 * inputs/outputs object a provider returns goes through here.
 */
export function clean<T>(v: T): T {
  return JSON.parse(JSON.stringify(v)) as T;
}

/** Whether a VM, template or pool already has this name (they share one namespace in the engine, reserved by directory). */
export function nameTaken(engine: Engine, name: string): boolean {
  return engine.store.kindOf(name) !== undefined;
}
