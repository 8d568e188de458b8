// The one poll-with-deadline: asks `probe` until it gives a value, fails fast when `fatal`
// says the thing waited for can no longer happen, and throws TIMEOUT naming what it waited for.
import { ForkvmError } from "../errors";

export interface PollOptions {
  /** What is waited for, as "Cannot <what>: ..." reads. */
  what: string;
  deadlineMs: number;
  /** Pause between probes (default 5 ms). */
  intervalMs?: number;
  /** Checked before every probe: a reason to stop at once (e.g. "QEMU exited"), or undefined. */
  fatal?: () => string | undefined;
  /** The error code when `fatal` answers (default QEMU). */
  fatalCode?: ForkvmError["code"];
  /** What the last probe saw, for the TIMEOUT message. */
  lastSeen?: () => string | undefined;
}

/**
 * Resolves with the first value `probe` returns that is not undefined. Throws TIMEOUT when the
 * deadline passes, `fatalCode` when `fatal` answers; errors thrown by `probe` propagate.
 */
export async function pollUntil<T>(probe: (remainingMs: number) => T | undefined | Promise<T | undefined>, o: PollOptions): Promise<T> {
  const until = Date.now() + o.deadlineMs;
  for (;;) {
    const why = o.fatal?.();
    if (why) throw new ForkvmError(o.fatalCode ?? "QEMU", `Cannot ${o.what}: ${why}`);
    const v = await probe(Math.max(0, until - Date.now()));
    if (v !== undefined) return v;
    if (Date.now() >= until) {
      const seen = o.lastSeen?.();
      throw new ForkvmError("TIMEOUT", `Cannot ${o.what}: not done within ${o.deadlineMs} ms${seen ? ` (last seen: ${seen})` : ""}`);
    }
    await sleep(o.intervalMs ?? 5);
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
