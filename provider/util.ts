// Small helpers of the providers: JSON-clean values for gRPC, property paths as users write
// them, name checks against the engine, bounded concurrency, and the host's free memory.
import * as fs from "node:fs";
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

/** Runs `fn` over `items`, at most `limit` at once; results in input order. Never rejects: errors are returned. */
export async function mapLimit<T, R>(items: T[], limit: number, fn: (item: T, i: number) => Promise<R>): Promise<Array<{ ok: true; value: R } | { ok: false; error: unknown }>> {
  const out: Array<{ ok: true; value: R } | { ok: false; error: unknown }> = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      try {
        out[i] = { ok: true, value: await fn(items[i], i) };
      } catch (error) {
        out[i] = { ok: false, error };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, worker));
  return out;
}

/** MemAvailable from /proc/meminfo in MiB, or undefined off Linux. */
export function hostFreeMiB(): number | undefined {
  try {
    const m = fs.readFileSync("/proc/meminfo", "utf8").match(/^MemAvailable:\s+(\d+) kB/m);
    return m ? Math.round(Number(m[1]) / 1024) : undefined;
  } catch {
    return undefined;
  }
}
