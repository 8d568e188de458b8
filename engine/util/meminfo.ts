// The one reader of the host's memory figures (/proc/meminfo).
import * as fs from "node:fs";
import * as os from "node:os";

/** MemAvailable in MiB (what can be had without swapping); os.freemem() where /proc is missing. */
export function availableMemoryMiB(): number {
  try {
    const m = fs.readFileSync("/proc/meminfo", "utf8").match(/^MemAvailable:\s+(\d+) kB/m);
    if (m) return Math.floor(Number(m[1]) / 1024);
  } catch {
    /* not Linux */
  }
  return Math.floor(os.freemem() / 1048576);
}
