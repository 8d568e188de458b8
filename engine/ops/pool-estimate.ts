// What a pool costs, computed in check so `pulumi preview` shows it: memory shared with the
// template (once) versus private per child, delta disks, and a warning when the host lacks room.
// Pure: the caller supplies the template's shape, measured figures and the host's free memory.

/** The guest shape a template passes on to its pool: what the estimate needs. */
export interface Shape {
  memoryMiB: number;
  vcpus: number;
  diskMiB: number;
  accel: "auto" | "kvm" | "tcg";
}

export interface Estimate {
  /** measured: from children of this template running now; model: from the template's size and a per-child overhead; unknown: the template's size is not known yet. */
  basis: "measured" | "model" | "unknown";
  children: number;
  memory: { sharedMiB: number; privatePerChildMiB: number; privateMiB: number; totalMiB: number; asFullVmsMiB: number };
  disk: { perChildMiB: number; totalMiB: number; location: "tmpfs" | "state-dir" };
  hostFreeMiB?: number;
  warnings: string[];
  summary: string;
}

/**
 * QEMU's own memory per child (heap, device emulation, TCG's translation cache), without guest
 * pages. TCG: measured on this project's build host (QEMU 7.2, 256 MiB guest, idle child:
 * private 48 MiB of which 2 MiB guest writes). KVM has no translation cache; 20 MiB is an
 * assumption (not measured here: KVM cannot boot kernels on the build host).
 */
export const QEMU_OVERHEAD_MIB = { tcg: 46, kvm: 20 } as const;
/** A fresh qcow2 delta disk (header + L1 table), measured: 196,616 bytes. */
export const DELTA_DISK_MIB = 0.2;
/** Guest pages a freshly forked child writes (identity, clock, RNG): ~1 % of its memory, at least 2 MiB. */
export function guestWritesMiB(memoryMiB: number): number {
  return Math.max(2, Math.round(memoryMiB * 0.01));
}

export interface EstimateInput {
  size: number;
  persistent: boolean;
  /** The template's shape; undefined when it is not known yet. */
  shape?: Shape;
  /** Mean private MiB of running children of this template, if any run. */
  measuredPrivateMiB?: number;
  /** MemAvailable of the host, MiB. */
  hostFreeMiB?: number;
  /** MiB the pool's existing children already take (they are not new cost). */
  existingMiB?: number;
}

const r1 = (n: number) => Math.round(n * 10) / 10;

function mib(n: number): string {
  return n >= 10_240 ? `${r1(n / 1024)} GiB` : `${Math.round(n)} MiB`;
}

export function estimate(i: EstimateInput): Estimate {
  const location = i.persistent ? "state-dir" : "tmpfs";
  const disk = { perChildMiB: DELTA_DISK_MIB, totalMiB: r1(DELTA_DISK_MIB * i.size), location } as const;
  if (!i.shape) {
    return {
      basis: "unknown",
      children: i.size,
      memory: { sharedMiB: 0, privatePerChildMiB: 0, privateMiB: 0, totalMiB: 0, asFullVmsMiB: 0 },
      disk,
      hostFreeMiB: i.hostFreeMiB,
      warnings: [],
      summary: `${i.size} children; memory unknown until the template exists (pass the Template resource to the pool for a preview estimate)`,
    };
  }
  const accel = i.shape.accel === "kvm" ? "kvm" : "tcg";
  const modelled = QEMU_OVERHEAD_MIB[accel] + guestWritesMiB(i.shape.memoryMiB);
  const perChild = r1(i.measuredPrivateMiB ?? modelled);
  const privateMiB = r1(perChild * i.size);
  const sharedMiB = i.size > 0 ? i.shape.memoryMiB : 0;
  const totalMiB = r1(sharedMiB + privateMiB + (location === "tmpfs" ? disk.totalMiB : 0));
  const asFullVmsMiB = r1(i.size * (i.shape.memoryMiB + QEMU_OVERHEAD_MIB[accel]));
  const warnings: string[] = [];
  const newMiB = Math.max(0, totalMiB - (i.existingMiB ?? 0));
  if (i.hostFreeMiB !== undefined && newMiB > i.hostFreeMiB) {
    warnings.push(`the fleet needs ~${mib(newMiB)} more memory but the host has ${mib(i.hostFreeMiB)} available`);
  }
  const basis: Estimate["basis"] = i.measuredPrivateMiB !== undefined ? "measured" : "model";
  const summary =
    `${i.size} × ${mib(i.shape.memoryMiB)} children: ${mib(sharedMiB)} shared copy-on-write + ${i.size} × ~${perChild} MiB private` +
    ` ≈ ${mib(totalMiB)} (as full VMs ≈ ${mib(asFullVmsMiB)}); delta disks ${i.size} × ${DELTA_DISK_MIB} MiB on ${location} (${basis})`;
  return {
    basis,
    children: i.size,
    memory: { sharedMiB, privatePerChildMiB: perChild, privateMiB, totalMiB, asFullVmsMiB },
    disk,
    hostFreeMiB: i.hostFreeMiB,
    warnings,
    summary,
  };
}
