// The only place that spawns QEMU (qemu-img goes through the one tool runner, util/run.ts): argv
// arrays, never shell strings.
// QEMU runs in its own session (setsid) so that killing the caller's process group leaves it
// alive; it is recognised later by pid *and* by the token in its command line.
import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { ForkvmError } from "../errors";
import { processName, vmPaths } from "./argv";
import { run } from "../util/run";
import { pollUntil } from "../util/poll";

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
 * how it learns QEMU finished starting. Throws HOST when the binary cannot be started.
 */
export async function spawnQemu(dir: string, argv: string[]): Promise<number> {
  const log = vmPaths(dir).log;
  const binary = which(qemuBinary());
  if (!binary) throw new ForkvmError("HOST", `Cannot start ${qemuBinary()}: not found on PATH`);
  const spawner = Spawner.get();
  if (spawner && ![log, binary, ...argv].some((a) => /[\n\0]/.test(a))) {
    const pid = await spawner.start(log, [binary, ...argv]).catch(() => undefined);
    if (pid) {
      await execed(pid);
      return pid;
    }
  }
  return spawnDirect(log, binary, argv);
}

/**
 * Waits until `pid` has exec'd past the spawner's subshell and setsid (the spawner reports the
 * pid before that), or has ended (QEMU's log then says why); at most 5 s. (While a process is
 * in execve, /proc/<pid>/cmdline can read empty: that is not an end.)
 */
async function execed(pid: number): Promise<void> {
  for (const until = Date.now() + 5000; Date.now() < until; ) {
    const cmd = readProc(pid, "cmdline");
    if (cmd === undefined) return; // gone
    const argv0 = cmd.split("\0")[0];
    if (argv0 !== "" && argv0 !== "/bin/sh" && path.basename(argv0) !== "setsid") return;
    const stat = readProc(pid, "stat");
    const state = stat?.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
    if (state === "Z" || state === "X") return;
    await new Promise((r) => setTimeout(r, 1));
  }
}

/** Node's own spawn: forks this whole process on the event loop (see Spawner). */
async function spawnDirect(log: string, binary: string, argv: string[]): Promise<number> {
  const logFd = fs.openSync(log, "a");
  try {
    const child = spawn(binary, argv, { detached: true, stdio: ["ignore", logFd, logFd] });
    const pid = await new Promise<number>((resolve, reject) => {
      child.once("spawn", () => resolve(child.pid!));
      child.once("error", reject);
    }).catch((err: Error) => {
      throw new ForkvmError("HOST", `Cannot start ${binary}: ${err.message}`, { cause: err });
    });
    child.unref();
    return pid;
  } finally {
    fs.closeSync(logFd);
  }
}

/** The executable that `cmd` names (a path, or a name looked up on PATH), or undefined. */
export function which(cmd: string, env = process.env): string | undefined {
  const ok = (p: string) => { try { fs.accessSync(p, fs.constants.X_OK); return fs.statSync(p).isFile(); } catch { return false; } };
  if (cmd.includes("/")) return ok(cmd) ? cmd : undefined;
  for (const d of (env.PATH ?? "/usr/local/bin:/usr/bin:/bin").split(":")) {
    const p = path.join(d || ".", cmd);
    if (ok(p)) return p;
  }
  return undefined;
}

/** One word for `eval` in sh: single-quoted, quotes inside escaped. */
export function shQuote(word: string): string {
  return `'${word.replace(/'/g, `'\\''`)}'`;
}

/*
 * A small shell that starts QEMU for this process. Node's spawn forks the whole Node process on
 * the event loop, and fork costs with the parent's memory: measured 1 ms at 42 MiB RSS, 20 ms at
 * 243 MiB (the engine under ts-node is ~140 MiB, a Pulumi provider host more). The shell is
 * ~1 MiB. Request: one line of single-quoted words (id, log file, argv); reply "<id> <pid>".
 * QEMU runs under setsid in its own session and is reparented to init at once (the subshell
 * exits), exactly as detached as Node's spawn made it. The shell ends when this process does
 * (its stdin closes).
 */
const SPAWNER_SCRIPT =
  'while IFS= read -r line; do eval "set -- $line"; id=$1; log=$2; shift 2; ( setsid "$@" </dev/null >>"$log" 2>&1 & echo "$id $!" ); done';

class Spawner {
  private static current: Spawner | undefined;
  private static unavailable = false;
  private readonly pending = new Map<number, { resolve: (pid: number) => void; reject: (e: Error) => void }>();
  private nextId = 1;
  private buf = "";
  private dead = false;

  /** The running spawner, started on first use; undefined where setsid or /bin/sh is missing. */
  static get(): Spawner | undefined {
    if (Spawner.current && !Spawner.current.dead) return Spawner.current;
    if (Spawner.unavailable || !which("setsid") || !which("/bin/sh")) {
      Spawner.unavailable = true;
      return undefined;
    }
    Spawner.current = new Spawner();
    return Spawner.current;
  }

  private readonly child = spawn("/bin/sh", ["-c", SPAWNER_SCRIPT], { stdio: ["pipe", "pipe", "ignore"] });

  private constructor() {
    this.child.stdout!.setEncoding("utf8");
    this.child.stdout!.on("data", (chunk: string) => this.onData(chunk));
    const fail = (err: Error) => {
      this.dead = true;
      for (const p of this.pending.values()) p.reject(err);
      this.pending.clear();
    };
    this.child.on("error", fail);
    this.child.on("exit", () => fail(new Error("the spawner shell exited")));
    this.child.stdin!.on("error", fail);
    this.child.unref();
    this.idle();
  }

  start(log: string, argv: string[]): Promise<number> {
    const id = this.nextId++;
    return new Promise<number>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.busy();
      this.child.stdin!.write(`${[String(id), log, ...argv].map(shQuote).join(" ")}\n`);
    });
  }

  private onData(chunk: string): void {
    this.buf += chunk;
    let nl: number;
    while ((nl = this.buf.indexOf("\n")) >= 0) {
      const [id, pid] = this.buf.slice(0, nl).split(" ").map(Number);
      this.buf = this.buf.slice(nl + 1);
      const p = this.pending.get(id);
      if (!p) continue;
      this.pending.delete(id);
      if (pid > 0) p.resolve(pid);
      else p.reject(new Error("the spawner reported no pid"));
    }
    if (this.pending.size === 0) this.idle();
  }

  /** While a request is out, its reply keeps this process alive; otherwise the shell does not. */
  private busy(): void {
    (this.child.stdout as unknown as { ref?: () => void }).ref?.();
  }

  private idle(): void {
    (this.child.stdout as unknown as { unref?: () => void }).unref?.();
    (this.child.stdin as unknown as { unref?: () => void }).unref?.();
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
  return pollUntil(() => (isAlive(pid, token) ? undefined : true), { what: `wait for QEMU pid ${pid} to exit`, deadlineMs }).catch(() => false);
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
