// The only place that spawns QEMU (and qemu-img): argv arrays, never shell strings.
// QEMU runs in its own session (setsid) so that killing the caller's process group leaves it
// alive; it is recognised later by pid *and* by the token in its command line.
import { spawn, execFile } from "node:child_process";
import * as fs from "node:fs";
import { ForkvmError } from "../errors";
import { processName, vmPaths } from "./argv";

export function qemuBinary(env = process.env): string {
  return env.FORKVM_QEMU ?? "qemu-system-x86_64";
}

export function qemuImgBinary(env = process.env): string {
  return env.FORKVM_QEMU_IMG ?? "qemu-img";
}

/** The last `n` lines of a file, or "" when it cannot be read. */
export function tail(path: string, n = 15): string {
  try {
    const text = fs.readFileSync(path, "utf8");
    return text.trimEnd().split("\n").slice(-n).join("\n");
  } catch {
    return "";
  }
}

/**
 * Starts QEMU detached from the caller: new session, stdin closed, stdout/stderr appended to
 * `<dir>/qemu.log`. Returns its pid once spawned; the caller then connects to QMP, which is
 * how it learns QEMU finished starting. Throws QEMU when the binary cannot be started.
 */
export async function spawnQemu(dir: string, argv: string[]): Promise<number> {
  const paths = vmPaths(dir);
  const logFd = fs.openSync(paths.log, "a");
  try {
    const child = spawn(qemuBinary(), argv, { detached: true, stdio: ["ignore", logFd, logFd] });
    const pid = await new Promise<number>((resolve, reject) => {
      child.once("spawn", () => resolve(child.pid!));
      child.once("error", reject);
    }).catch((err: Error) => {
      throw new ForkvmError("HOST", `Cannot start ${qemuBinary()}: ${err.message}`, { cause: err });
    });
    child.unref();
    return pid;
  } finally {
    fs.closeSync(logFd);
  }
}

function readProc(pid: number, file: string): string | undefined {
  try {
    return fs.readFileSync(`/proc/${pid}/${file}`, "utf8");
  } catch {
    return undefined;
  }
}

/** True when `pid` is a live (not zombie) QEMU carrying `token` in its command line. */
export function isAlive(pid: number | undefined, token: string): boolean {
  if (!pid) return false;
  const cmdline = readProc(pid, "cmdline");
  if (!cmdline || !cmdline.split("\0").some((a) => a.startsWith(processName(token)))) return false;
  const stat = readProc(pid, "stat");
  const state = stat?.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
  return state !== undefined && state !== "Z" && state !== "X";
}

/** Waits until the process is gone; false when the deadline passed first. */
export async function waitGone(pid: number, token: string, deadlineMs: number): Promise<boolean> {
  const until = Date.now() + deadlineMs;
  while (isAlive(pid, token)) {
    if (Date.now() > until) return false;
    await new Promise((r) => setTimeout(r, 5));
  }
  return true;
}

/**
 * Ends a QEMU process: SIGTERM, wait up to `graceMs`, then SIGKILL and wait again.
 * Safe to call on a process that is already gone. Throws QEMU if it survives SIGKILL.
 */
export async function killQemu(pid: number | undefined, token: string, graceMs = 3000): Promise<void> {
  if (!pid || !isAlive(pid, token)) return;
  try { process.kill(pid, "SIGTERM"); } catch { /* already gone */ }
  if (await waitGone(pid, token, graceMs)) return;
  try { process.kill(pid, "SIGKILL"); } catch { /* already gone */ }
  if (!(await waitGone(pid, token, 5000))) throw new ForkvmError("QEMU", `Cannot kill QEMU pid ${pid}: still alive after SIGKILL`);
}

/** Runs a short-lived tool (qemu-img, apt-get...) and returns its stdout. Throws HOST with stderr. */
export function run(cmd: string, args: string[], opts: { timeoutMs?: number; what?: string } = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: opts.timeoutMs ?? 60_000, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err) {
        const last = String(stderr).trimEnd().split("\n").slice(-10).join("\n");
        reject(new ForkvmError("HOST", `Cannot ${opts.what ?? `run ${cmd}`}: ${last || err.message}`, { cause: err, details: { stderr: last } }));
      } else resolve(String(stdout));
    });
  });
}

/** Creates a qcow2 disk: empty of `sizeMiB`, or an overlay on `backing`. */
export async function createDisk(path: string, opts: { sizeMiB?: number; backing?: string; backingFormat?: string }): Promise<void> {
  const args = ["create", "-q", "-f", "qcow2"];
  if (opts.backing) args.push("-b", opts.backing, "-F", opts.backingFormat ?? "qcow2");
  args.push(path);
  if (opts.sizeMiB !== undefined) args.push(`${opts.sizeMiB}M`);
  await run(qemuImgBinary(), args, { what: `create disk ${path}` });
}

/** Copies a disk with its whole backing chain into one independent qcow2 (a full clone's disk). */
export async function copyDisk(from: string, to: string): Promise<void> {
  await run(qemuImgBinary(), ["convert", "-q", "-O", "qcow2", from, to], { what: `copy disk ${from} to ${to}`, timeoutMs: 3600_000 });
}
