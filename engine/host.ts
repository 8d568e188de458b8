// What the host offers: QEMU's version and machine types, the accelerator to use (probed for
// real guest kernel speed, not just /dev/kvm's presence), memory and the tmpfs for memory images.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { execFileSync, spawn } from "node:child_process";
import { ForkvmError, messageOf } from "./errors";
import { qemuBinary, which } from "./qemu/process";
import { run } from "./util/run";
import type { Accel } from "./qemu/argv";
import { writeFileAtomic } from "./util/atomic-write";

export type AccelChoice = Accel | "auto";

/** Loop iterations of the probe: ~0.1 s on hardware KVM, ~minutes where ring-0 code is emulated. */
const PROBE_ITERATIONS = 200_000_000;
const PROBE_DEADLINE_MS = 2500;

/**
 * A 64 KiB BIOS image that enters 32-bit protected mode (ring 0), runs `dec ecx; jnz` for
 * `iterations` rounds, then writes to isa-debug-exit (port 0xf4) so QEMU exits with status 1.
 * Guest ring-0 speed is what decides whether a kernel boots in reasonable time.
 */
export function probeBios(iterations = PROBE_ITERATIONS): Buffer {
  const bios = Buffer.alloc(65536, 0);
  const base = 0xf0000; // the image is mapped at 0xF0000..0xFFFFF
  const code = [
    0xfa, // cli
    0x66, 0x2e, 0x0f, 0x01, 0x16, 0x38, 0x00, // lgdt dword [cs:0x38]
    0x0f, 0x20, 0xc0, // mov eax, cr0
    0x0c, 0x01, // or al, 1
    0x0f, 0x22, 0xc0, // mov cr0, eax
    0x66, 0xea, ...u32(base + 24), 0x08, 0x00, // jmp dword 0x08:pm (offset 24)
    0xb9, ...u32(iterations), // pm: mov ecx, iterations
    0x49, // dec ecx
    0x75, 0xfd, // jnz -3
    0xb0, 0x00, 0xe6, 0xf4, // mov al, 0; out 0xf4, al
    0xf4, // hlt
    0xeb, 0xfe, // jmp $
  ];
  Buffer.from(code).copy(bios, 0);
  // GDT at 0x28: null descriptor, then a flat 4 GiB 32-bit ring-0 code segment.
  Buffer.from([0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0x9a, 0xcf, 0]).copy(bios, 0x28);
  // GDT descriptor at 0x38: limit 15, linear base.
  Buffer.from([0x0f, 0x00, ...u32(base + 0x28)]).copy(bios, 0x38);
  // Reset vector (0xFFFF0): jmp far F000:0000.
  Buffer.from([0xea, 0x00, 0x00, 0x00, 0xf0]).copy(bios, 0xfff0);
  return bios;
}

function u32(n: number): number[] {
  return [n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, (n >>> 24) & 0xff];
}

export interface AccelProbe {
  accel: Accel;
  /** Why this accelerator was chosen, in a sentence for people. */
  reason: string;
  /** Set when the choice is a fallback the user should know about. */
  warning?: string;
  kvmLoopMs?: number;
  tcgLoopMs?: number;
}

/** Runs the probe BIOS under `accel`; resolves with wall-clock ms, or undefined past the deadline. */
async function timeLoop(accel: Accel, biosPath: string, deadlineMs: number): Promise<number | undefined> {
  const start = process.hrtime.bigint();
  const child = spawn(qemuBinary(), [
    "-accel", accel, "-machine", "pc", "-nodefaults", "-no-user-config", "-display", "none",
    "-m", "16", "-bios", biosPath, "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
  ], { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr.on("data", (d) => (stderr += d));
  const timer = setTimeout(() => child.kill("SIGKILL"), deadlineMs);
  const code = await new Promise<number | null>((resolve) => child.on("close", (c) => resolve(c)));
  clearTimeout(timer);
  const ms = Number(process.hrtime.bigint() - start) / 1e6;
  if (code === 1) return ms; // isa-debug-exit with value 0 → exit status 1
  if (code === null) return undefined; // killed at the deadline
  throw new ForkvmError("QEMU", `Cannot run the accelerator probe under ${accel}: exit ${code}: ${stderr.trim().split("\n").slice(-3).join(" ")}`);
}

/**
 * Picks the accelerator. `kvm`/`tcg` are taken as asked (kvm fails with HOST when /dev/kvm is
 * unusable); `auto` probes: KVM is used only when it runs guest ring-0 code at hardware speed.
 */
export async function chooseAccel(choice: AccelChoice, cacheFile?: string): Promise<AccelProbe> {
  const kvm = kvmUsable();
  if (choice === "tcg") return { accel: "tcg", reason: "asked for tcg" };
  if (choice === "kvm") {
    if (!kvm) throw new ForkvmError("HOST", "Cannot use accel kvm: /dev/kvm is missing or not writable", { details: { field: "accel" } });
    return { accel: "kvm", reason: "asked for kvm" };
  }
  if (!kvm) return { accel: "tcg", reason: "/dev/kvm is missing or not writable", warning: "KVM is not available: using TCG (software emulation, much slower)" };
  const fingerprint = hostFingerprint();
  if (cacheFile) {
    try {
      const cached = JSON.parse(fs.readFileSync(cacheFile, "utf8"));
      if (cached.fingerprint === fingerprint && Date.now() - cached.at < 24 * 3600_000) return cached.probe as AccelProbe;
    } catch { /* no cache yet */ }
  }
  const probe = await probeKvm();
  if (cacheFile) {
    fs.mkdirSync(path.dirname(cacheFile), { recursive: true });
    writeFileAtomic(cacheFile, JSON.stringify({ fingerprint, at: Date.now(), probe }));
  }
  return probe;
}

async function probeKvm(): Promise<AccelProbe> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "forkvm-probe-"));
  try {
    const bios = path.join(dir, "probe.bin");
    fs.writeFileSync(bios, probeBios());
    const kvmLoopMs = await timeLoop("kvm", bios, PROBE_DEADLINE_MS).catch(() => undefined);
    const tcgLoopMs = await timeLoop("tcg", bios, 20_000).catch(() => undefined);
    const loop = `${PROBE_ITERATIONS / 1e6}M-iteration ring-0 loop`;
    if (kvmLoopMs !== undefined) {
      return { accel: "kvm", reason: `KVM ran a ${loop} in ${kvmLoopMs.toFixed(0)} ms (TCG: ${tcgLoopMs?.toFixed(0) ?? "n/a"} ms)`, kvmLoopMs, tcgLoopMs };
    }
    return {
      accel: "tcg",
      reason: `KVM did not finish a ${loop} within ${PROBE_DEADLINE_MS} ms (TCG: ${tcgLoopMs?.toFixed(0) ?? "n/a"} ms): guest kernel code is emulated here (nested virtualisation?)`,
      warning: "KVM is present but runs guest kernel code far below hardware speed: using TCG",
      tcgLoopMs,
    };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function hostFingerprint(): string {
  const cpu = (() => { try { return fs.readFileSync("/proc/cpuinfo", "utf8").match(/model name\s*:\s*(.*)/)?.[1] ?? ""; } catch { return ""; } })();
  return [os.release(), cpu, qemuBinary()].join("|");
}

export interface QemuIdentity {
  /** QEMU's version, e.g. "7.2.22". */
  version: string;
  /** The binary that was run. */
  binary: string;
  /** dev:inode:size:mtime of the binary: when it is unchanged, so is the version (no process run). */
  id: string;
}

const versions = new Map<string, string>();

/**
 * The QEMU installed now. `FORKVM_TEST_QEMU_VERSION` (test-only: simulates an upgrade) replaces
 * the version it reports. The version is read once per binary identity (a process, synchronously:
 * the fork path's check is synchronous). Throws HOST when QEMU cannot be run.
 */
export function installedQemu(env = process.env): QemuIdentity {
  const binary = which(qemuBinary(env), env);
  if (!binary) throw new ForkvmError("HOST", `Cannot find ${qemuBinary(env)}: not on PATH (install qemu-system-x86: npm run setup)`);
  const id = fileId(binary)!;
  const override = env.FORKVM_TEST_QEMU_VERSION;
  if (override) return { version: override, binary, id: `${id}:test-${override}` };
  let version = versions.get(id);
  if (!version) {
    try {
      const out = execFileSync(binary, ["--version"], { encoding: "utf8", timeout: 10_000, stdio: ["ignore", "pipe", "pipe"] });
      version = out.match(/version\s+([0-9.]+)/)?.[1] ?? out.split("\n")[0].trim();
    } catch (err) {
      throw new ForkvmError("HOST", `Cannot run ${binary} --version: ${messageOf(err)}`, { cause: err });
    }
    versions.set(id, version);
  }
  return { version, binary, id };
}

function fileId(file: string): string | undefined {
  const st = fs.statSync(file, { throwIfNoEntry: false });
  return st && `${st.dev}:${st.ino}:${st.size}:${Math.round(st.mtimeMs)}`;
}

/** The identity of `binary` when it is the QEMU this host runs now, else undefined. */
export function binaryId(binary: string): string | undefined {
  return binary === which(qemuBinary()) ? fileId(binary) : undefined;
}

/** Whether /dev/kvm can be opened read-write. */
export function kvmUsable(): boolean {
  try { fs.accessSync("/dev/kvm", fs.constants.R_OK | fs.constants.W_OK); return true; } catch { return false; }
}

/** QEMU's version string, e.g. "7.2.19". Throws HOST when QEMU is missing. */
export async function qemuVersion(): Promise<string> {
  return installedQemu().version;
}

let machineCache: string | undefined;
/** The versioned machine type behind the `pc` alias (e.g. pc-i440fx-7.2). */
export async function resolveMachine(alias = "pc"): Promise<string> {
  if (alias === "pc" && machineCache) return machineCache;
  const out = await run(qemuBinary(), ["-machine", "help"], { what: "list QEMU machine types", timeoutMs: 10_000 });
  const line = out.split("\n").find((l) => l.split(/\s+/)[0] === alias);
  const resolved = line?.match(/alias of ([\w.-]+)/)?.[1] ?? (line ? alias : undefined);
  if (!resolved) throw new ForkvmError("HOST", `Cannot use machine type ${alias}: QEMU does not offer it`);
  if (alias === "pc") machineCache = resolved;
  return resolved;
}

export { availableMemoryMiB } from "./util/meminfo";

/** Filesystem type and free space of a directory (statfs). */
export function fsInfo(dir: string): { type: string; freeMiB: number } {
  const s = fs.statfsSync(dir);
  const TMPFS = 0x01021994;
  return { type: s.type === TMPFS ? "tmpfs" : `0x${s.type.toString(16)}`, freeMiB: Math.floor((s.bavail * s.bsize) / 1048576) };
}
