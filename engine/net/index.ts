// A VM's network: its backend by egress (netdev.ts), the passt process of `nat` VMs (passt.ts),
// host ports picked without duplicates (ports.ts), and what launch does with them (below).
import { startPasst, stopPasst, passtPids } from "./passt";
import { pickPort, releasePorts } from "./ports";
import type { Egress, NetForward } from "./netdev";

export { GUEST_NET, netdevArgs, passtArgv, portConflicts, type Egress, type NetForward } from "./netdev";
export { PortConflict, passtPids, stopPasst } from "./passt";
export { pickPort, releasePorts } from "./ports";

/** How many times a launch picks new host ports for `auto` forwards that were taken. */
export const PORT_ATTEMPTS = 8;

/** A VM's egress: what its manifest says, `nat` for manifests from before egress existed. */
export function egressOf(vm: { egress?: Egress }): Egress {
  return vm.egress ?? "nat";
}

/**
 * Gives the NIC of a started QEMU (its monitor answers) its backend: for `nat`, starts passt on
 * the NIC's socket and waits until it holds every forward; for `none`, QEMU already has it.
 * Returns the pid of passt, if any. Throws PortConflict (a forward's port is taken) or HOST.
 */
export async function attachNetwork(dir: string, egress: Egress, forwards: NetForward[]): Promise<number | undefined> {
  if (egress !== "nat") return undefined;
  return startPasst(dir, forwards);
}

/**
 * After a PortConflict: gives each conflicting `auto` forward a new port (in place) and returns
 * true, or false when a conflicting port was the user's own (it cannot be moved).
 */
export async function repickConflicts(forwards: Array<NetForward & { auto?: boolean }>, conflicts: Array<{ proto: string; host: number }>): Promise<boolean> {
  const hit = forwards.filter((f) => conflicts.some((c) => c.proto === f.proto && c.host === f.host));
  if (!hit.length || hit.some((f) => !f.auto)) return false;
  for (const f of hit) {
    releasePorts([f.host]);
    f.host = await pickPort();
  }
  return true;
}

/** Ends whatever network helper of the VM in `dir` still runs (they end with QEMU; for gc). */
export function stopNetwork(dir: string): number {
  return stopPasst(dir);
}

/** Pids of the network helpers of the VM in `dir` (for gc and leak checks). */
export function netHelperPids(dir: string): number[] {
  return passtPids(dir);
}
