// Test-only fault injection: `FORKVM_FAULT=<step>[@n]` makes this process SIGKILL itself the n-th
// time (default: the first) it reaches the named step, so tests can crash an operation at an exact
// moment. Unset (always, outside tests) a step costs one comparison. Steps are listed in FAULT_STEPS.
import { ForkvmError } from "../errors";

/** Every named step, where it is, and what has happened by then. */
export const FAULT_STEPS = {
  "boot:recorded": "instance/boot.ts: the manifest holds the new token, QEMU is not spawned yet",
  "boot:spawned": "instance/boot.ts: QEMU runs (pid recorded), the guest is booting",
  "boot:ready": "instance/boot.ts: the guest agent answered, before init and metadata",
  "fork:recorded": "instance/fork-into.ts: delta disk made, the manifest holds the new token, QEMU is not spawned yet",
  "fork:spawned": "instance/fork-into.ts: QEMU runs (pid recorded), waiting for the checkpoint",
  "fork:running": "instance/fork-into.ts: the checkpoint is loaded and the guest runs, before its identity",
  "gc:removing": "ops/lifecycle.ts: gc holds an object's lock and is about to remove it",
} as const;
export type FaultStep = keyof typeof FAULT_STEPS;

function parse(spec: string | undefined): { step: string; nth: number } | undefined {
  if (!spec) return undefined;
  const [step, n] = spec.split("@");
  if (!(step in FAULT_STEPS) || (n !== undefined && !/^[1-9]\d*$/.test(n))) {
    throw new ForkvmError("INVALID_ARGUMENT", `Cannot use FORKVM_FAULT=${spec}: not <step>[@n] with a step of ${Object.keys(FAULT_STEPS).join(", ")}`, { details: { field: "FORKVM_FAULT" } });
  }
  return { step, nth: n ? Number(n) : 1 };
}

const spec = process.env.FORKVM_FAULT;
let armed: { step: string; nth: number } | undefined;
let seen = 0;

/**
 * Kills this process with SIGKILL when FORKVM_FAULT names this step (and this is its n-th time).
 * Throws INVALID_ARGUMENT when FORKVM_FAULT is set but names no step.
 */
export function fault(step: FaultStep): void {
  if (!spec) return;
  armed ??= parse(spec);
  if (armed?.step !== step || ++seen !== armed.nth) return;
  process.kill(process.pid, "SIGKILL");
}
