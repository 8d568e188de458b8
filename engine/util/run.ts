// The one runner of short-lived host tools (qemu-img, mkfifo, apt-get, dpkg, xz ...): argv arrays,
// never a shell, a deadline, output captured, and failures as ForkvmError carrying the tool's last
// stderr lines. (Node's own spawn: execa, the usual library, is ESM-only since v6 and this project
// compiles to CommonJS.) Long-lived QEMU processes are started by qemu/process.ts instead.
import { spawn } from "node:child_process";
import { ForkvmError, messageOf, type ForkvmErrorCode } from "../errors";

export interface RunOptions {
  /** What the run does, as "Cannot <what>: ..." reads. Default: "run <cmd>". */
  what?: string;
  /** The error code of a failure (default HOST). A missing tool is always HOST. */
  code?: ForkvmErrorCode;
  cwd?: string;
  timeoutMs?: number;
  input?: Buffer | string;
  env?: NodeJS.ProcessEnv;
  /** Most bytes of stdout kept (default 256 MiB); beyond it the run fails. */
  maxOutputBytes?: number;
}

const STDERR_KEEP = 64 * 1024;

/** Runs `cmd args` and resolves with its stdout as bytes. Throws `code` (or HOST) on failure. */
export function runBytes(cmd: string, args: string[], o: RunOptions = {}): Promise<Buffer> {
  const what = o.what ?? `run ${cmd}`;
  const code = o.code ?? "HOST";
  const maxOut = o.maxOutputBytes ?? 256 * 1024 * 1024;
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      cwd: o.cwd,
      stdio: [o.input !== undefined ? "pipe" : "ignore", "pipe", "pipe"],
      env: { ...process.env, LC_ALL: "C", ...o.env },
    });
    if (o.input !== undefined) {
      child.stdin!.on("error", () => {}); // the exit status tells
      child.stdin!.end(o.input);
    }
    const out: Buffer[] = [];
    let outBytes = 0;
    let err = Buffer.alloc(0);
    let overflow = false;
    child.stdout!.on("data", (b: Buffer) => {
      outBytes += b.length;
      if (outBytes > maxOut) {
        overflow = true;
        child.kill("SIGKILL");
      } else out.push(b);
    });
    child.stderr!.on("data", (b: Buffer) => {
      err = Buffer.concat([err, b]);
      if (err.length > STDERR_KEEP) err = err.subarray(err.length - STDERR_KEEP);
    });
    let timedOut = false;
    const timer = setTimeout(() => { timedOut = true; child.kill("SIGKILL"); }, o.timeoutMs ?? 60_000);
    child.on("error", (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      const missing = e.code === "ENOENT";
      reject(new ForkvmError(missing ? "HOST" : code, `Cannot ${what}: ${missing ? `${cmd} is not installed (npm run setup installs what forkvm needs)` : messageOf(e)}`, { cause: e, details: { command: [cmd, ...args] } }));
    });
    child.on("close", (status, signal) => {
      clearTimeout(timer);
      if (status === 0 && !overflow) return resolve(Buffer.concat(out));
      const stderr = err.toString("utf8").trimEnd().split("\n").slice(-10).join("\n");
      const how = overflow ? `output over ${maxOut} bytes` : timedOut ? `no result within ${o.timeoutMs ?? 60_000} ms` : signal ? `killed by ${signal}` : `exit status ${status}`;
      const last = stderr.split("\n").filter(Boolean).pop();
      reject(new ForkvmError(timedOut ? "TIMEOUT" : code, `Cannot ${what}: ${cmd} failed (${how})${last ? `: ${last}` : ""}`, { details: { stderr, command: [cmd, ...args], exitCode: status } }));
    });
  });
}

/** Runs `cmd args` and resolves with its stdout as text. */
export async function run(cmd: string, args: string[], o: RunOptions = {}): Promise<string> {
  return (await runBytes(cmd, args, o)).toString("utf8");
}
