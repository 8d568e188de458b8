// QMP client over a unix socket: reads the greeting, negotiates capabilities, runs one
// command at a time with a deadline, and keeps events (with QEMU's timestamps) for waiters.
import * as net from "node:net";
import { z } from "zod";
import { ForkvmError, messageOf } from "../errors";

const Greeting = z.object({ QMP: z.object({ version: z.object({ qemu: z.object({ major: z.number(), minor: z.number(), micro: z.number() }) }) }) });
const Reply = z.union([
  z.object({ return: z.unknown(), id: z.string().optional() }),
  z.object({ error: z.object({ class: z.string(), desc: z.string() }), id: z.string().optional() }),
]);
const Event = z.object({
  event: z.string(),
  data: z.record(z.string(), z.unknown()).optional(),
  timestamp: z.object({ seconds: z.number(), microseconds: z.number() }),
});
export type QmpEvent = { event: string; data: Record<string, unknown>; atMs: number };

type Pending = { resolve: (v: unknown) => void; reject: (e: Error) => void; timer: NodeJS.Timeout; command: string };

export class Qmp {
  readonly events: QmpEvent[] = [];
  private buf = "";
  private pending: Pending | undefined;
  private queue: Promise<unknown> = Promise.resolve();
  private waiters: Array<() => void> = [];
  private closed: Error | undefined;
  private greeting!: (v: unknown) => void;
  private greetingFailed!: (e: Error) => void;

  private constructor(private readonly sock: net.Socket, readonly path: string) {
    sock.setEncoding("utf8");
    sock.on("data", (chunk: string) => this.onData(chunk));
    sock.on("error", (err) => this.fail(err));
    sock.on("close", () => this.fail(new Error("QMP connection closed")));
  }

  /**
   * Connects to QEMU's monitor at `path`, retrying while the socket is not there yet.
   * Throws QMP when the deadline passes or `isAlive` says QEMU has gone.
   */
  static async connect(path: string, deadlineMs: number, isAlive: () => boolean = () => true): Promise<Qmp> {
    const until = Date.now() + deadlineMs;
    let lastErr: unknown;
    for (;;) {
      try {
        const sock = await new Promise<net.Socket>((resolve, reject) => {
          const s = net.createConnection(path);
          s.once("connect", () => { s.removeListener("error", reject); resolve(s); });
          s.once("error", reject);
        });
        const qmp = new Qmp(sock, path);
        await qmp.handshake(Math.max(1000, until - Date.now()));
        return qmp;
      } catch (err) {
        lastErr = err;
      }
      if (!isAlive()) throw new ForkvmError("QEMU", `Cannot connect to QMP at ${path}: QEMU exited`, { cause: lastErr });
      if (Date.now() > until) throw new ForkvmError("TIMEOUT", `Cannot connect to QMP at ${path}: ${messageOf(lastErr)}`, { cause: lastErr });
      await new Promise((r) => setTimeout(r, 5));
    }
  }

  private async handshake(deadlineMs: number): Promise<void> {
    const greeted = new Promise((resolve, reject) => { this.greeting = resolve; this.greetingFailed = reject; });
    const timer = setTimeout(() => this.greetingFailed(new Error("no QMP greeting")), deadlineMs);
    try {
      Greeting.parse(await greeted);
    } finally {
      clearTimeout(timer);
    }
    await this.execute("qmp_capabilities", undefined, deadlineMs);
  }

  private onData(chunk: string): void {
    this.buf += chunk;
    let nl: number;
    while ((nl = this.buf.indexOf("\n")) >= 0) {
      const line = this.buf.slice(0, nl).trim();
      this.buf = this.buf.slice(nl + 1);
      if (line) this.onMessage(line);
    }
  }

  private onMessage(line: string): void {
    let msg: unknown;
    try {
      msg = JSON.parse(line);
    } catch {
      return this.fail(new Error(`QMP sent a line that is not JSON: ${line.slice(0, 200)}`));
    }
    if (msg && typeof msg === "object" && "QMP" in msg) return this.greeting?.(msg);
    const ev = Event.safeParse(msg);
    if (ev.success) {
      const t = ev.data.timestamp;
      this.events.push({ event: ev.data.event, data: ev.data.data ?? {}, atMs: t.seconds * 1000 + t.microseconds / 1000 });
      for (const w of this.waiters.splice(0)) w();
      return;
    }
    const reply = Reply.safeParse(msg);
    const p = this.pending;
    if (!p) return;
    this.pending = undefined;
    clearTimeout(p.timer);
    if (!reply.success) return p.reject(new ForkvmError("QMP", `Cannot run ${p.command}: malformed reply ${line.slice(0, 200)}`));
    if ("error" in reply.data) {
      const e = reply.data.error;
      return p.reject(new ForkvmError("QMP", `Cannot run ${p.command}: ${e.desc}`, { details: { class: e.class } }));
    }
    p.resolve(reply.data.return);
  }

  private fail(err: Error): void {
    if (this.closed) return;
    this.closed = err;
    this.greetingFailed?.(err);
    const p = this.pending;
    this.pending = undefined;
    if (p) {
      clearTimeout(p.timer);
      p.reject(new ForkvmError("QMP", `Cannot run ${p.command}: ${err.message}`, { cause: err }));
    }
    for (const w of this.waiters.splice(0)) w();
  }

  /** Runs one QMP command; commands are queued, one in flight at a time. Throws QMP or TIMEOUT. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, deadlineMs = 10_000): Promise<T> {
    const run = () =>
      new Promise<T>((resolve, reject) => {
        if (this.closed) return reject(new ForkvmError("QMP", `Cannot run ${command}: ${this.closed.message}`));
        const timer = setTimeout(() => {
          this.pending = undefined;
          reject(new ForkvmError("TIMEOUT", `Cannot run ${command}: no reply within ${deadlineMs} ms`));
        }, deadlineMs);
        this.pending = { resolve: resolve as (v: unknown) => void, reject, timer, command };
        this.sock.write(JSON.stringify(args ? { execute: command, arguments: args } : { execute: command }) + "\n");
      });
    const result = this.queue.then(run, run);
    this.queue = result.catch(() => undefined);
    return result;
  }

  /** Resolves with the first event (already received or future) that matches; TIMEOUT otherwise. */
  async waitEvent(match: (e: QmpEvent) => boolean, deadlineMs: number, what: string): Promise<QmpEvent> {
    const until = Date.now() + deadlineMs;
    for (;;) {
      const found = this.events.find(match);
      if (found) return found;
      if (this.closed) throw new ForkvmError("QMP", `Cannot wait for ${what}: ${this.closed.message}`);
      const left = until - Date.now();
      if (left <= 0) throw new ForkvmError("TIMEOUT", `Cannot wait for ${what}: not seen within ${deadlineMs} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiters.push(() => { clearTimeout(timer); resolve(); });
      });
    }
  }

  get isClosed(): boolean {
    return this.closed !== undefined;
  }

  close(): void {
    this.sock.destroy();
  }
}
