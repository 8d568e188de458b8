// The passt process of a VM with egress `nat`: started once QEMU serves the NIC's stream socket,
// on that socket already connected (no socket path passt, as `nobody`, would need to write), in its
// own session so it outlives the caller; it quits by itself when QEMU closes the socket.
import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as net from "node:net";
import { ForkvmError, messageOf } from "../errors";
import { pollUntil } from "../util/poll";
import { netSocketPath, passtArgv, passtLogPath, portConflicts, type NetForward } from "./netdev";

export function passtBinary(env = process.env): string {
  return env.FORKVM_PASST ?? "passt";
}

/** A start that failed because host ports were taken (launch picks others and starts again). */
export class PortConflict extends ForkvmError {
  constructor(message: string, readonly conflicts: Array<{ proto: "tcp" | "udp"; host: number }>) {
    super("CONFLICT", message, { details: { conflicts } });
  }
}

function connectOnce(sock: string, deadlineMs: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.createConnection(sock);
    const timer = setTimeout(() => { s.destroy(); reject(new Error(`no connection to ${sock} within ${deadlineMs} ms`)); }, deadlineMs);
    s.once("connect", () => { clearTimeout(timer); resolve(s); });
    s.once("error", (err) => { clearTimeout(timer); reject(err); });
  });
}

/**
 * Connects to QEMU's netdev socket, retrying while it is not there or not listening yet (under
 * load QEMU may still be setting it up: the soak saw ENOENT and ECONNREFUSED in ~0.5 % of forks).
 */
async function connect(sock: string, deadlineMs: number): Promise<net.Socket> {
  let last: unknown;
  const found = await pollUntil(async (left) => {
    try {
      return await connectOnce(sock, Math.max(100, left));
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== "ENOENT" && code !== "ECONNREFUSED") throw err;
      last = err;
      return undefined;
    }
  }, { what: `connect to ${sock}`, deadlineMs, intervalMs: 10, lastSeen: () => (last ? messageOf(last) : undefined) });
  return found;
}

/** Socket inodes a process holds; undefined when it is gone, "unknown" when not ours to read. */
function socketInodes(pid: number): Set<string> | undefined | "unknown" {
  let fds: string[];
  try {
    fds = fs.readdirSync(`/proc/${pid}/fd`);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EACCES" && fs.existsSync(`/proc/${pid}`) ? "unknown" : undefined;
  }
  const out = new Set<string>();
  for (const fd of fds) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(fs.readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (m) out.add(m[1]);
    } catch { /* closed meanwhile */ }
  }
  return out;
}

/**
 * Sockets bound on 127.0.0.1 from /proc/net/{tcp,udp} text: `proto:port` → inode (TCP: listening
 * ones only). Exported for tests.
 */
export function boundLoopbackPorts(text: string, proto: "tcp" | "udp"): Map<number, string> {
  const out = new Map<number, string>();
  for (const line of text.split("\n").slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 10) continue;
    const [addr, port] = f[1].split(":");
    if (addr !== "0100007F") continue;
    if (proto === "tcp" && f[3] !== "0A") continue;
    out.set(parseInt(port, 16), f[9]);
  }
  return out;
}

function readText(file: string): string {
  try { return fs.readFileSync(file, "utf8"); } catch { return ""; }
}

/** True once `pid` holds a socket bound to every forward's port (any holder, where its fds are not ours to read); undefined when it is gone. */
function boundAll(pid: number, forwards: NetForward[]): boolean | undefined {
  const mine = socketInodes(pid);
  if (!mine) return undefined;
  if (!forwards.length) return true;
  const tables = { tcp: boundLoopbackPorts(readText("/proc/net/tcp"), "tcp"), udp: boundLoopbackPorts(readText("/proc/net/udp"), "udp") };
  return forwards.every((f) => {
    const inode = tables[f.proto].get(f.host);
    return inode !== undefined && (mine === "unknown" || mine.has(inode));
  });
}

/**
 * Starts the passt of the VM in `dir` (its QEMU serves `net.sock`) and returns its pid once it
 * holds every forward's port. Throws PortConflict (CONFLICT, details.conflicts) when a port was
 * taken, HOST when passt is missing or fails otherwise (with its last log line).
 */
export async function startPasst(dir: string, forwards: NetForward[], deadlineMs = 10_000): Promise<number> {
  const log = passtLogPath(dir);
  fs.rmSync(log, { force: true });
  let sock: net.Socket;
  try {
    sock = await connect(netSocketPath(dir), Math.min(deadlineMs, 5000));
  } catch (err) {
    throw new ForkvmError("QEMU", `Cannot connect passt to ${netSocketPath(dir)}: ${messageOf(err)}`, { cause: err });
  }
  let exit: { code: number | null; signal: string | null } | undefined;
  let spawnError: Error | undefined;
  const logFd = fs.openSync(log, "a", 0o600);
  let pid: number;
  try {
    const child = spawn(passtBinary(), passtArgv(dir, 3, forwards), { detached: true, stdio: ["ignore", logFd, logFd, sock] });
    pid = await new Promise<number>((resolve, reject) => {
      child.once("spawn", () => resolve(child.pid!));
      child.once("error", reject);
    }).catch((err: Error) => {
      spawnError = err;
      return 0;
    });
    child.once("exit", (code, signal) => { exit = { code, signal }; });
    child.unref();
  } finally {
    fs.closeSync(logFd);
    sock.destroy(); // passt holds its own copy of the connection
  }
  if (!pid) {
    const missing = (spawnError as NodeJS.ErrnoException | undefined)?.code === "ENOENT";
    throw new ForkvmError("HOST", `Cannot start ${passtBinary()}: ${missing ? "not installed (egress nat needs Debian's passt; npm run setup installs it)" : messageOf(spawnError)}`, { cause: spawnError });
  }
  const failure = (): ForkvmError => {
    const text = readText(log);
    const conflicts = portConflicts(text);
    const last = text.trimEnd().split("\n").filter((l) => !/^passt .*version/.test(l)).pop() ?? `exit ${exit?.code ?? exit?.signal}`;
    if (conflicts.length) return new PortConflict(`Cannot forward 127.0.0.1:${conflicts.map((c) => c.host).join(", ")}: in use (${last.trim()})`, conflicts);
    return new ForkvmError("HOST", `Cannot start passt for ${dir}: ${last.trim()}`, { details: { log: text.slice(-4000) } });
  };
  try {
    await pollUntil(() => {
      if (exit) throw failure();
      const ok = boundAll(pid, forwards);
      if (ok === undefined) throw failure(); // gone before Node saw its exit
      return ok ? true : undefined;
    }, { what: `start passt for ${dir}`, deadlineMs, intervalMs: 2 });
  } catch (err) {
    // A passt that never got ready is not left behind (one that hung would outlive its VM).
    try { process.kill(pid, "SIGKILL"); } catch { /* gone */ }
    throw err;
  }
  return pid;
}

/** Pids of passt processes serving the VM in `dir` (found by the log path in their command line). */
export function passtPids(dir: string): number[] {
  const marker = `\0${passtLogPath(dir)}\0`;
  const out: number[] = [];
  let entries: string[];
  try { entries = fs.readdirSync("/proc"); } catch { return out; }
  for (const p of entries) {
    if (!/^\d+$/.test(p)) continue;
    const cmd = readText(`/proc/${p}/cmdline`);
    if (cmd.includes(marker) && cmd.includes("--one-off")) out.push(Number(p));
  }
  return out;
}

/** Ends every passt of the VM in `dir` (normally they end with their QEMU). Safe to repeat. */
export function stopPasst(dir: string): number {
  const pids = passtPids(dir);
  for (const pid of pids) {
    try { process.kill(pid, "SIGKILL"); } catch { /* gone */ }
  }
  return pids.length;
}
