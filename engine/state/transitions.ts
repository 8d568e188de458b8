// The one table of a VM's legal transitions: which operation may run from which status, what state
// it leaves, and a VM's status (its recorded state reconciled with its process). Every verb asks
// here before it acts; nothing else decides whether a VM "may go from A to B".
import { ForkvmError } from "../errors";
import { isAlive } from "../qemu/process";
import { isLive } from "../qemu/find";
import type { VmManifest } from "./manifest";

export type VmState = VmManifest["state"];
/**
 * The recorded state reconciled with the processes: a dead `running` VM is `crashed`; a `running`
 * parent whose capture's process died is `paused` (the capture may have stopped it: gc resumes
 * it); a `creating` VM whose creator died is `abandoned` (gc removes it, QEMU included); a
 * `starting` VM whose starter died is `interrupted` (gc stops it; start starts it again).
 */
export type VmStatus = VmState | "crashed" | "paused" | "abandoned" | "interrupted";

export type VmOp = "start" | "stop" | "reset" | "capture-frozen" | "capture-running" | "exec" | "set-metadata";

interface Rule {
  from: readonly VmStatus[];
  /** The state the operation leaves (undefined: unchanged). */
  to?: VmState;
  /** Which VMs it applies to, with the reason otherwise. */
  only?: (vm: VmManifest) => string | undefined;
  /** In words, for the refusal. */
  needs: string;
}

const nonPersistentChild = (vm: VmManifest) =>
  vm.role === "child" && !vm.persistent ? undefined : vm.role === "child" ? "it is a persistent child (stop and start keep its disk)" : "it is a parent (only non-persistent children reset to their template)";

export const TRANSITIONS: Readonly<Record<VmOp, Rule>> = {
  start: { from: ["stopped", "crashed", "interrupted"], to: "running", needs: "a stopped or crashed VM" },
  stop: { from: ["running", "crashed", "stopped", "creating", "paused", "abandoned", "interrupted"], to: "stopped", needs: "a VM that was not consumed by a template" },
  reset: { from: ["running", "stopped", "crashed", "paused", "interrupted"], to: "running", only: nonPersistentChild, needs: "a non-persistent child" },
  "capture-frozen": { from: ["running"], to: "consumed", needs: "a running VM" },
  "capture-running": { from: ["running"], to: "running", needs: "a running VM" },
  exec: { from: ["running"], needs: "a running VM" },
  "set-metadata": { from: ["creating", "starting", "running", "stopped", "crashed", "paused", "interrupted"], needs: "a VM that was not consumed by a template" },
};

export function statusOf(vm: VmManifest): VmStatus {
  // An operation whose process is gone was interrupted (a manifest of an older forkvm has no `op`: as recorded).
  const orphaned = vm.op !== undefined && !isLive(vm.op.by);
  if (vm.state === "running") return !isAlive(vm.pid, vm.token) ? "crashed" : orphaned && vm.op?.what === "capture" ? "paused" : "running";
  if (vm.state === "creating") return orphaned ? "abandoned" : "creating";
  if (vm.state === "starting") return orphaned ? "interrupted" : "starting";
  return vm.state;
}

/** Whether `op` may run on `vm` now. */
export function allowed(vm: VmManifest, op: VmOp, status: VmStatus = statusOf(vm)): boolean {
  const rule = TRANSITIONS[op];
  return rule.from.includes(status) && !rule.only?.(vm);
}

/**
 * Checks that `op` may run on `vm` and returns the state it leaves. Throws CONFLICT saying why
 * not: "Cannot start VM web-1: it is running (start needs a stopped or crashed VM)".
 */
export function transition(vm: VmManifest, op: VmOp, status: VmStatus = statusOf(vm)): VmState {
  const rule = TRANSITIONS[op];
  const verb = op.startsWith("capture") ? "capture" : op.replace("-", " ");
  const notApplicable = rule.only?.(vm);
  if (notApplicable) throw new ForkvmError("CONFLICT", `Cannot ${verb} VM ${vm.name}: ${notApplicable}`, { details: { status, op } });
  if (!rule.from.includes(status)) {
    const why = status === "consumed" ? `it was consumed by template ${vm.templates?.at(-1) ?? "?"}` : `it is ${status}`;
    throw new ForkvmError("CONFLICT", `Cannot ${verb} VM ${vm.name}: ${why} (${verb} needs ${rule.needs})`, { details: { status, op } });
  }
  return rule.to ?? vm.state;
}
