// The one table of a VM's legal transitions: which operation may run from which status, what state
// it leaves, and a VM's status (its recorded state reconciled with its process). Every verb asks
// here before it acts; nothing else decides whether a VM "may go from A to B".
import { ForkvmError } from "../errors";
import { isAlive } from "../qemu/process";
import type { VmManifest } from "./manifest";

export type VmState = VmManifest["state"];
/** The recorded state reconciled with the process: a dead `running` VM is `crashed`. */
export type VmStatus = VmState | "crashed";

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
  start: { from: ["stopped", "crashed"], to: "running", needs: "a stopped or crashed VM" },
  stop: { from: ["running", "crashed", "stopped", "creating"], to: "stopped", needs: "a VM that was not consumed by a template" },
  reset: { from: ["running", "stopped", "crashed"], to: "running", only: nonPersistentChild, needs: "a non-persistent child" },
  "capture-frozen": { from: ["running"], to: "consumed", needs: "a running VM" },
  "capture-running": { from: ["running"], to: "running", needs: "a running VM" },
  exec: { from: ["running"], needs: "a running VM" },
  "set-metadata": { from: ["creating", "running", "stopped", "crashed"], needs: "a VM that was not consumed by a template" },
};

export function statusOf(vm: VmManifest): VmStatus {
  if (vm.state === "running") return isAlive(vm.pid, vm.token) ? "running" : "crashed";
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
