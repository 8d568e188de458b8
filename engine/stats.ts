// Memory accounting per VM from /proc/<pid>/smaps: RSS, PSS, private memory, and how much of
// the guest RAM is still the template's pages (shared copy-on-write, not yet copied).
import * as fs from "node:fs";
import type { VmManifest } from "./state/manifest";
import { isAlive } from "./qemu/process";

export interface MemoryStats {
  name: string;
  pid: number;
  rssMiB: number;
  pssMiB: number;
  /** Private_Clean + Private_Dirty over the whole QEMU process. */
  privateMiB: number;
  /** Guest RAM pages still backed by the template (or the parent's) memory file. */
  sharedWithTemplateMiB: number;
  /** Guest RAM pages this VM has written (copied on write). */
  guestDirtyMiB: number;
}

const KB = 1024;
const mib = (kb: number) => Math.round((kb / KB) * 10) / 10;

/** Sums the kB fields of one smaps block or of smaps_rollup. */
export function parseSmapsFields(text: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of text.split("\n")) {
    const m = line.match(/^(\w+):\s+(\d+) kB/);
    if (m) out[m[1]] = (out[m[1]] ?? 0) + Number(m[2]);
  }
  return out;
}

/** The fields of the mappings of `file` in a full smaps text. */
export function mappingFields(smaps: string, file: string): Record<string, number> {
  const out: Record<string, number> = {};
  let inside = false;
  for (const line of smaps.split("\n")) {
    const header = line.match(/^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$/);
    if (header) {
      inside = header[1].replace(/ \(deleted\)$/, "") === file;
      continue;
    }
    if (!inside) continue;
    const m = line.match(/^(\w+):\s+(\d+) kB/);
    if (m) out[m[1]] = (out[m[1]] ?? 0) + Number(m[2]);
  }
  return out;
}

/** Memory figures of a running VM, or undefined when its process is gone. */
export function memoryStats(vm: VmManifest): MemoryStats | undefined {
  if (!vm.pid || !isAlive(vm.pid, vm.token)) return undefined;
  let rollup: string, smaps: string;
  try {
    rollup = fs.readFileSync(`/proc/${vm.pid}/smaps_rollup`, "utf8");
    smaps = fs.readFileSync(`/proc/${vm.pid}/smaps`, "utf8");
  } catch {
    return undefined;
  }
  const all = parseSmapsFields(rollup);
  const ram = mappingFields(smaps, vm.memoryPath);
  // Only a linked child's RAM maps a template privately; a parent's or full clone's is its own.
  const cow = vm.role === "child" && vm.clone !== "full" && vm.startedBy === "fork";
  return {
    name: vm.name,
    pid: vm.pid,
    rssMiB: mib(all.Rss ?? 0),
    pssMiB: mib(all.Pss ?? 0),
    privateMiB: mib((all.Private_Clean ?? 0) + (all.Private_Dirty ?? 0)),
    sharedWithTemplateMiB: cow ? mib((ram.Rss ?? 0) - (ram.Anonymous ?? 0)) : 0,
    guestDirtyMiB: cow ? mib(ram.Anonymous ?? 0) : mib(ram.Rss ?? 0),
  };
}
