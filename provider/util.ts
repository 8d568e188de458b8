// Small helpers of the providers: JSON-clean values for gRPC, name checks against the engine,
// bounded concurrency, and the host's free memory.
import * as fs from "node:fs";
import type { Engine } from "../engine";

/**
 * A copy holding only JSON values: Pulumi's Struct encoding rejects `undefined`, so every
 * inputs/outputs object a provider returns goes through here.
 */
export function clean<T>(v: T): T {
  return JSON.parse(JSON.stringify(v)) as T;
}

/** Whether a VM or a template already has this name. */
export function nameTaken(engine: Engine, name: string): boolean {
  return engine.listVms().some((v) => v.name === name) || engine.listTemplates().some((t) => t.name === name);
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
