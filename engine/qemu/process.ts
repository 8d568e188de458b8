// The only place that spawns QEMU (qemu-img goes through the one tool runner, util/run.ts): argv
// arrays, never shell strings.
// QEMU runs in its own session (setsid) so that killing the caller's process group leaves it
// alive; it is recognised later by pid *and* by the token in its command line. It starts inside
// its cgroup (CPU and memory caps), and its stderr and serial console log are size-capped.
import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { ForkvmError } from "../errors";
import { CONSOLE_LOG_FD, processName, vmPaths, type ResourceLimits } from "./argv";
import { createCgroup, joinCgroup, removeCgroup } from "./cgroup";
import { run } from "../util/run";
import { pollUntil, sleep } from "../util/poll";

export function qemuBinary(env = process.env): string {
  return env.FORKVM_QEMU ?? "qemu-system-x86_64";
}

export function qemuImgBinary(env = process.env): string {
  return env.FORKVM_QEMU_IMG ?? "qemu-img";
}

/**
 * How much of a VM's serial console log is kept, per file: `console.log` is written until it
 * holds this much, then becomes `console.log.1` (replacing the one before) and a new one starts.
 * So a VM's console takes at most twice this on disk, however much its guest prints, and once it
 * has printed that much, at least this much of what it printed last is kept (less up to 4 KiB
 * at the seam). FORKVM_CONSOLE_LOG_KIB (at least 4) overrides it.
 */
export function consoleLogBytes(env = process.env): number {
  const kib = Number(env.FORKVM_CONSOLE_LOG_KIB);
  return Number.isInteger(kib) && kib >= 4 ? kib * 1024 : 1024 * 1024;
}
/** The same cap for QEMU's own stderr (`qemu.log`, `qemu.log.1`). */
export const QEMU_LOG_BYTES = 256 * 1024;

/** The FIFOs through which QEMU's stderr and console log reach their cappers (in the VM's directory). */
export function logPipes(dir: string): string[] {
  const p = vmPaths(dir);
  return [`${p.log}.pipe`, `${p.consoleLog}.pipe`];
}

/** Creates the log FIFOs of many VM directories with one mkfifo process (the spawner makes missing ones itself). */
export async function createLogPipes(dirs: string[]): Promise<void> {
  const paths = dirs.flatMap(logPipes).filter((p) => !fs.existsSync(p));
  if (paths.length) await run("mkfifo", ["-m", "600", ...paths], { what: "create log FIFOs" });
}

/** Up to the last `max` bytes of a file, or "". */
function readEnd(file: string, max = 64 * 1024): string {
  let fd: number | undefined;
  try {
    fd = fs.openSync(file, "r");
    const size = fs.fstatSync(fd).size;
    const buf = Buffer.alloc(Math.min(size, max));
    fs.readSync(fd, buf, 0, buf.length, size - buf.length);
    return buf.toString("utf8");
  } catch {
    return "";
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

/** Whether a capper still reads `<file>.pipe` (opening a FIFO's write end without blocking fails with ENXIO when nobody reads it). */
function capperReads(file: string): boolean {
  let fd: number | undefined;
  try {
    fd = fs.openSync(`${file}.pipe`, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK);
    return true;
  } catch {
    return false;
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

const pause = new Int32Array(new SharedArrayBuffer(4));

/**
 * The last `n` lines of a capped log (`<file>.1` then `<file>`, see consoleLogBytes), or "" when
 * it cannot be read. What a QEMU printed just before it died passes through its capper first:
 * while a capper still reads the log's FIFO, this waits for it to finish, up to `drainMs` (so an
 * error message quotes QEMU's last words; a QEMU still running costs the whole wait).
 */
export function tail(file: string, n = 15, drainMs = 200): string {
  for (const until = Date.now() + drainMs; Date.now() < until && capperReads(file); ) Atomics.wait(pause, 0, 0, 5);
  const text = readEnd(`${file}.1`) + readEnd(file);
  return text.trimEnd().split("\n").slice(-n).join("\n");
}

/** The token of the QEMU an argv starts (from its `-name forkvm-<token>,...`). */
function tokenOf(argv: string[]): string | undefined {
  const i = argv.indexOf("-name");
  const m = i >= 0 ? argv[i + 1]?.match(/^forkvm-([^,]+)/) : undefined;
  return m?.[1];
}

/**
 * Starts QEMU detached from the caller: new session, stdin closed, inside the cgroup of its
 * `limits` (if they cap CPU or memory), its stdout/stderr into `<dir>/qemu.log` and its console
 * log (CONSOLE_LOG_FD) into `<dir>/console.log`, both through a capper that keeps them bounded
 * (see consoleLogBytes). The cappers end when QEMU does. Returns QEMU's pid once spawned; the
 * caller then connects to QMP, which is how it learns QEMU finished starting. Throws HOST when
 * the binary cannot be started or the limits need cgroups the host does not give.
 */
export async function spawnQemu(dir: string, argv: string[], limits?: ResourceLimits): Promise<number> {
  const p = vmPaths(dir);
  const binary = which(qemuBinary());
  if (!binary) throw new ForkvmError("HOST", `Cannot start ${qemuBinary()}: not found on PATH`);
  const token = tokenOf(argv);
  const procs = token ? createCgroup(token, limits) : [];
  try {
    const spawner = Spawner.get();
    const words = [p.log, p.consoleLog, String(consoleLogBytes()), String(QEMU_LOG_BYTES), ...procs, "--", binary, ...argv];
    if (spawner && !words.some((a) => /[\n\0]/.test(a))) {
      const pid = await spawner.start(words).catch(() => undefined);
      if (pid) {
        await execed(pid);
        return pid;
      }
    }
    return await spawnDirect(p.log, p.consoleLog, binary, argv, procs);
  } catch (err) {
    if (token) removeCgroup(token);
    throw err;
  }
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

/**
 * Node's own spawn: forks this whole process on the event loop (see Spawner). Used only where
 * there is no /bin/sh or setsid: then no capper runs and the logs are plain appended files, and
 * QEMU joins its cgroup a moment after it started.
 */
async function spawnDirect(log: string, consoleLog: string, binary: string, argv: string[], procs: string[]): Promise<number> {
  const logFd = fs.openSync(log, "a");
  const conFd = fs.openSync(consoleLog, "a");
  try {
    const stdio: Array<"ignore" | number> = ["ignore", logFd, logFd];
    while (stdio.length < CONSOLE_LOG_FD) stdio.push("ignore");
    stdio[CONSOLE_LOG_FD] = conFd;
    const child = spawn(binary, argv, { detached: true, stdio });
    const pid = await new Promise<number>((resolve, reject) => {
      child.once("spawn", () => resolve(child.pid!));
      child.once("error", reject);
    }).catch((err: Error) => {
      throw new ForkvmError("HOST", `Cannot start ${binary}: ${err.message}`, { cause: err });
    });
    child.unref();
    try {
      joinCgroup(procs, pid);
    } catch (err) {
      try { process.kill(pid, "SIGKILL"); } catch { /* gone */ }
      throw new ForkvmError("HOST", `Cannot move QEMU pid ${pid} into its cgroup: ${(err as Error).message}`, { cause: err });
    }
    return pid;
  } finally {
    fs.closeSync(logFd);
    fs.closeSync(conFd);
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
 * ~1 MiB. Request: one line of single-quoted words (id, qemu.log, console.log, their caps in
 * bytes, the cgroup.procs files to join, "--", argv); reply "<id> <pid>". The shell ends when
 * this process does (its stdin closes).
 * Each QEMU is started by VM_SCRIPT under setsid, in its own session, reparented to init at once
 * (the subshell exits), exactly as detached as Node's spawn made it: it joins its cgroups (so QEMU
 * never runs a moment outside them), starts two cappers (CAP_SCRIPT) on FIFOs, opens their write
 * ends as stderr and CONSOLE_LOG_FD, and execs QEMU (same pid). A capper copies its FIFO into a
 * file with dd (each read written at once: the log is current) under a file size limit of <cap>
 * bytes (ulimit -f, SIGXFSZ ignored: the write that reaches it is cut short, losing at most one
 * 4 KiB read), then moves the full file to <file>.1 and starts a new one: a guest that prints for
 * an hour takes at most 2 × cap of disk. Cappers run in QEMU's session and cgroup and
 * end at EOF, when QEMU has exited; if one died, QEMU's writes fail (QEMU ignores SIGPIPE) and
 * the VM runs on.
 */
const CAP_SCRIPT =
  // umask 077: the logs hold what the guest printed; QEMU's own user (qemu/run-as.ts) may enter the VM's directory.
  'umask 077; f=$1; trap "" XFSZ; ulimit -f $(( $2 / 512 )); [ -s "$f" ] && mv -f "$f" "$f.1"; ' +
  'while ! dd bs=4096 of="$f" 2>/dev/null; do [ -s "$f" ] || break; mv -f "$f" "$f.1"; done';
const VM_SCRIPT =
  'cap=$1; log=$2; con=$3; cb=$4; lb=$5; shift 5; ' +
  'while [ "$#" -gt 0 ] && [ "$1" != -- ]; do echo 0 2>/dev/null >"$1" || { echo "forkvm: cannot move QEMU into its cgroup ($1)" >>"$log"; exit 1; }; shift; done; shift; ' +
  '[ -p "$log.pipe" ] && [ -p "$con.pipe" ] || { rm -f "$log.pipe" "$con.pipe"; mkfifo -m 600 "$log.pipe" "$con.pipe" || exit 1; }; ' +
  '/bin/sh -c "$cap" forkvm-log "$log" "$lb" <"$log.pipe" & ' +
  '/bin/sh -c "$cap" forkvm-log "$con" "$cb" <"$con.pipe" & ' +
  `exec 2>"$log.pipe" ${CONSOLE_LOG_FD}>"$con.pipe"; exec "$@" 1>&2`;
const SPAWNER_SCRIPT =
  'vm=$1; cap=$2; while IFS= read -r line; do eval "set -- $line"; id=$1; shift; ( setsid /bin/sh -c "$vm" /bin/sh "$cap" "$@" </dev/null >/dev/null 2>&1 & echo "$id $!" ); done';

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

  private readonly child = spawn("/bin/sh", ["-c", SPAWNER_SCRIPT, "forkvm-spawner", VM_SCRIPT, CAP_SCRIPT], { stdio: ["pipe", "pipe", "ignore"] });

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

  /** Starts one QEMU; `words` as SPAWNER_SCRIPT reads them after the id. */
  start(words: string[]): Promise<number> {
    const id = this.nextId++;
    return new Promise<number>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.busy();
      this.child.stdin!.write(`${[String(id), ...words].map(shQuote).join(" ")}\n`);
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
  if (pid && isAlive(pid, token)) {
    try { process.kill(pid, "SIGTERM"); } catch { /* already gone */ }
    if (!(await waitGone(pid, token, graceMs))) {
      try { process.kill(pid, "SIGKILL"); } catch { /* already gone */ }
      if (!(await waitGone(pid, token, 5000))) throw new ForkvmError("QEMU", `Cannot kill QEMU pid ${pid}: still alive after SIGKILL`);
    }
  }
  // Its cgroup goes with it (its log cappers leave it a moment after QEMU; later spawns sweep
  // what is left).
  for (let i = 0; i < 20 && !removeCgroup(token); i++) await sleep(10);
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
