// Test-only fault injection: `FORKVM_FAULT=<step>[@n][:fail]` makes this process SIGKILL itself
// (or, with `:fail`, throw HOST) the n-th time (default: the first) it reaches the named step, so
// tests can crash or fail an operation at an exact moment. Unset (always, outside tests) a step
// costs one comparison. Steps are listed in FAULT_STEPS.
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
  // ops/template.ts has these points under FORKVM_TEST_FAULT; they are here for it to move to.
  "frozen-paused": "ops/template.ts: the parent is stopped, its checkpoint not yet saved",
  "frozen-saved": "ops/template.ts: checkpoint and memory image saved, the parent's QEMU not yet quit",
  "frozen-consumed": "ops/template.ts: the parent's manifest says consumed, the template's is not written",
  "running-paused": "ops/template.ts: the live migration completed, the parent is paused (postmigrate)",
  "running-snapshotted": "ops/template.ts: the parent's disk is swapped onto its overlay, the parent not yet resumed",
  "running-built": "ops/template.ts: the builder is done, the template's manifest not yet written",
} as const;
export type FaultStep = keyof typeof FAULT_STEPS;

interface Armed { step: string; nth: number; fail: boolean }

function parse(spec: string): Armed {
  const m = /^([a-z:-]+?)(?:@([1-9]\d*))?(:fail)?$/.exec(spec);
  if (!m || !(m[1] in FAULT_STEPS)) {
    throw new ForkvmError("INVALID_ARGUMENT", `Cannot use FORKVM_FAULT=${spec}: not <step>[@n][:fail] with a step of ${Object.keys(FAULT_STEPS).join(", ")}`, { details: { field: "FORKVM_FAULT" } });
  }
  return { step: m[1], nth: m[2] ? Number(m[2]) : 1, fail: Boolean(m[3]) };
}

const spec = process.env.FORKVM_FAULT;
let armed: Armed | undefined;
let seen = 0;

/**
 * Kills this process with SIGKILL (or throws HOST, with `:fail`) when FORKVM_FAULT names this
 * step and this is its n-th time. Throws INVALID_ARGUMENT when FORKVM_FAULT is set but names no step.
 */
export function fault(step: FaultStep): void {
  if (!spec) return;
  armed ??= parse(spec);
  if (armed.step !== step || ++seen !== armed.nth) return;
  if (armed.fail) throw new ForkvmError("HOST", `Cannot go on: test fault at ${step}`, { details: { fault: step } });
  process.kill(process.pid, "SIGKILL");
}
