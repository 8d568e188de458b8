// Waits on QEMU's own state over QMP: the run state (`query-status`) and a migration
// (`query-migrate`), each with a deadline and failing at once on a terminal state.
import { ForkvmError } from "../errors";
import { pollUntil } from "../util/poll";
import type { Qmp } from "./qmp";

const TERMINAL = ["internal-error", "guest-panicked", "shutdown"];

/** Polls `query-status` until QEMU reports one of `want`; fails fast when QEMU exits or ends up in a terminal state. */
export async function waitStatus(qmp: Qmp, want: string[], deadlineMs: number, alive: () => boolean, what: string): Promise<string> {
  let last: string | undefined;
  return pollUntil(async (left) => {
    const st = await qmp.execute<{ status: string }>("query-status", undefined, Math.max(1000, left));
    last = st.status;
    if (want.includes(st.status)) return st.status;
    if (TERMINAL.includes(st.status)) throw new ForkvmError("QEMU", `Cannot ${what}: the VM is in state ${st.status}`);
    return undefined;
  }, { what, deadlineMs, intervalMs: 2, fatal: () => (alive() ? undefined : "QEMU exited"), lastSeen: () => last && `status ${last}` });
}

export interface MigrationResult {
  downtimeMs?: number;
  totalMs?: number;
  bytes?: number;
}

/** Polls `query-migrate` on a source until completed; failed or cancelled fail at once. */
export async function waitMigration(qmp: Qmp, deadlineMs: number, what: string): Promise<MigrationResult> {
  let last: string | undefined;
  return pollUntil(async (left) => {
    const st = await qmp.execute<{ status?: string; "error-desc"?: string; downtime?: number; "total-time"?: number; ram?: { transferred?: number } }>("query-migrate", undefined, Math.max(1000, left));
    last = st.status;
    if (st.status === "completed") return { downtimeMs: st.downtime, totalMs: st["total-time"], bytes: st.ram?.transferred };
    if (st.status === "failed" || st.status === "cancelled") {
      throw new ForkvmError("MIGRATION", `Cannot ${what}: migration ${st.status}${st["error-desc"] ? `: ${st["error-desc"]}` : ""}`);
    }
    return undefined;
  }, { what, deadlineMs, intervalMs: 2, lastSeen: () => last && `migration ${last}` });
}
