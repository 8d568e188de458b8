// QMP client over a unix socket: reads the greeting, negotiates capabilities, runs one command at
// a time with a deadline, and keeps events (with QEMU's timestamps) for waiters.
//
// Ids and late replies. Every command carries an `id` ("fvm-<n>", unique per connection) and a
// reply is matched to its command by id only, never by arrival order. A command that times out is
// remembered as abandoned: its late reply is discarded when it comes, never taken as the answer
// to the next command (Kata's govmm keeps the cancelled command at the head of its queue until its
// answer arrives; the ids do that job here). A timed-out command does NOT hold back the next one:
// QEMU (without out-of-band commands, which we never enable) runs a monitor's commands in order,
// so the next command simply waits inside QEMU behind the abandoned one and its own deadline
// covers that wait; blocking on our side as well would only add the abandoned command's full
// remaining time to every later call while telling us nothing the ids do not.
//
// Hostile or broken peers: lines are framed in linear time and capped (`maxLineBytes`, default
// 8 MiB; QEMU 7.2's longest reply, query-qmp-schema, is ~200 KB). A line over the cap is dropped
// as it streams and taken as the reply to the oldest command still unanswered (QEMU answers in
// order; events are never that long): the command waiting fails with QMP (details.reason
// "too-long"), an abandoned one is simply forgotten. Lines that are not JSON, replies with an
// unknown id or none, and unknown messages are ignored. No exception leaves a socket handler.
import * as net from "node:net";
import { z } from "zod";
import { ForkvmError, messageOf } from "../errors";
import { LineFramer } from "../util/line-framer";

/** Default cap on one line from QEMU. */
export const DEFAULT_QMP_MAX_LINE_BYTES = 8 * 1024 * 1024;
/** Events kept for waiters; older ones are dropped beyond this. */
const MAX_EVENTS = 10_000;

const Greeting = z.object({ QMP: z.object({ version: z.object({ qemu: z.object({ major: z.number(), minor: z.number(), micro: z.number() }) }) }) });
const Reply = z.union([
  z.object({ return: z.unknown(), id: z.unknown().optional() }),
  z.object({ error: z.object({ class: z.string(), desc: z.string() }), id: z.unknown().optional() }),
]);
const Event = z.object({
  event: z.string(),
  data: z.record(z.string(), z.unknown()).optional(),
  timestamp: z.object({ seconds: z.number(), microseconds: z.number() }),
});
export type QmpEvent = { event: string; data: Record<string, unknown>; atMs: number };

type Pending = { id: string; command: string; resolve: (v: unknown) => void; reject: (e: Error) => void; timer: NodeJS.Timeout };

export interface QmpOptions {
  /** Longest line accepted from QEMU, in bytes (default 8 MiB). */
  maxLineBytes?: number;
}

export class Qmp {
  readonly events: QmpEvent[] = [];
  private readonly framer: LineFramer;
  private nextId = 1;
  /** The command waiting for its reply (one at a time). */
  private active: Pending | undefined;
  /** Ids sent and not answered yet, oldest first (the active one and abandoned ones). */
  private outstanding: string[] = [];
  /** Ids of commands that timed out: their replies are discarded. */
  private abandoned = new Set<string>();
  private queue: Promise<unknown> = Promise.resolve();
  private waiters: Array<() => void> = [];
  private closed: Error | undefined;
  private greeting!: (v: unknown) => void;
  private greetingFailed!: (e: Error) => void;

  private constructor(private readonly sock: net.Socket, readonly path: string, opts: QmpOptions) {
    const maxLineBytes = opts.maxLineBytes ?? DEFAULT_QMP_MAX_LINE_BYTES;
    this.framer = new LineFramer({ maxLineBytes, onLine: (l) => this.onLine(l), onOverflow: () => this.onOverlong(maxLineBytes) });
    sock.on("data", (chunk: Buffer) => {
      try {
        this.framer.push(chunk);
      } catch (err) {
        this.fail(new Error(`cannot handle a QMP message: ${messageOf(err)}`));
      }
    });
    sock.on("error", (err) => this.fail(err));
    sock.on("close", () => this.fail(new Error("QMP connection closed")));
  }

  /**
   * Connects to QEMU's monitor at `path`, retrying while the socket is not there yet.
   * Throws QEMU when `isAlive` says QEMU has gone, TIMEOUT when the deadline passes.
   */
  static async connect(path: string, deadlineMs: number, isAlive: () => boolean = () => true, opts: QmpOptions = {}): Promise<Qmp> {
    const until = Date.now() + deadlineMs;
    let lastErr: unknown;
    for (;;) {
      try {
        const sock = await new Promise<net.Socket>((resolve, reject) => {
          const s = net.createConnection(path);
          s.once("connect", () => { s.removeListener("error", reject); resolve(s); });
          s.once("error", reject);
        });
        const qmp = new Qmp(sock, path, opts);
        try {
          await qmp.handshake(Math.max(1000, until - Date.now()));
        } catch (err) {
          qmp.close();
          throw err;
        }
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

  private onLine(raw: Buffer): void {
    const line = raw.toString("utf8").trim();
    if (!line) return;
    let msg: unknown;
    try {
      msg = JSON.parse(line);
    } catch {
      return; // not JSON: ignored (see the header)
    }
    if (!msg || typeof msg !== "object" || Array.isArray(msg)) return;
    if ("QMP" in msg) return this.greeting?.(msg);
    const ev = Event.safeParse(msg);
    if (ev.success) {
      const t = ev.data.timestamp;
      this.events.push({ event: ev.data.event, data: ev.data.data ?? {}, atMs: t.seconds * 1000 + t.microseconds / 1000 });
      if (this.events.length > 2 * MAX_EVENTS) this.events.splice(0, this.events.length - MAX_EVENTS);
      for (const w of this.waiters.splice(0)) w();
      return;
    }
    const reply = Reply.safeParse(msg);
    if (!reply.success) return;
    const id = reply.data.id;
    if (typeof id !== "string") return; // every command we send has an id: this answers none of ours
    this.answered(id);
    if (this.abandoned.delete(id)) return; // the late reply of a command that timed out
    const p = this.active;
    if (!p || p.id !== id) return; // an id we never sent
    this.settle();
    if ("error" in reply.data) {
      const e = reply.data.error;
      return p.reject(new ForkvmError("QMP", `Cannot run ${p.command}: ${e.desc}`, { details: { class: e.class } }));
    }
    p.resolve(reply.data.return);
  }

  /** A line over the cap: the reply of the oldest command still unanswered (see the header). */
  private onOverlong(maxLineBytes: number): void {
    const id = this.outstanding.shift();
    if (id === undefined || this.abandoned.delete(id)) return;
    const p = this.active;
    if (!p || p.id !== id) return;
    this.settle();
    p.reject(new ForkvmError("QMP", `Cannot run ${p.command}: its reply is longer than ${maxLineBytes} bytes`, { details: { reason: "too-long", limit: maxLineBytes } }));
  }

  private answered(id: string): void {
    const i = this.outstanding.indexOf(id);
    if (i >= 0) this.outstanding.splice(i, 1);
  }

  /** Ends the active command's wait (the caller resolves or rejects it). */
  private settle(): void {
    if (this.active) clearTimeout(this.active.timer);
    this.active = undefined;
  }

  private fail(err: Error): void {
    if (this.closed) return;
    this.closed = err;
    this.greetingFailed?.(err);
    const p = this.active;
    this.settle();
    this.outstanding = [];
    this.abandoned.clear();
    if (p) p.reject(new ForkvmError("QMP", `Cannot run ${p.command}: ${err.message}`, { cause: err }));
    for (const w of this.waiters.splice(0)) w();
  }

  /**
   * Runs one QMP command; commands are queued, one in flight at a time (a timed-out one is no
   * longer in flight: see the header). Throws QMP when QEMU answers an error, the reply is too
   * long or the monitor goes away; TIMEOUT when no reply comes within `deadlineMs`.
   */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, deadlineMs = 10_000): Promise<T> {
    const run = () =>
      new Promise<T>((resolve, reject) => {
        if (this.closed) return reject(new ForkvmError("QMP", `Cannot run ${command}: ${this.closed.message}`));
        const id = `fvm-${this.nextId++}`;
        const line = JSON.stringify(args ? { execute: command, arguments: args, id } : { execute: command, id }) + "\n";
        const timer = setTimeout(() => {
          if (this.active?.id !== id) return;
          this.settle();
          this.abandoned.add(id);
          reject(new ForkvmError("TIMEOUT", `Cannot run ${command}: no reply within ${deadlineMs} ms`, { details: { id } }));
        }, deadlineMs);
        this.active = { id, command, resolve: resolve as (v: unknown) => void, reject, timer };
        this.outstanding.push(id);
        this.sock.write(line);
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
