// The host end of one VM's guest agent: one call at a time (and, with a lock file, one across
// processes), each with a fresh id and a deadline; lines with other ids are stale and dropped.
// The wire format lives in protocol.ts and PROTOCOL.md; the FIFOs in channel.ts.
import * as lockfile from "proper-lockfile";
import { ForkvmError, messageOf } from "../errors";
import { Logger, silentLogger } from "../log";
import { sleep } from "../util/poll";
import { AgentChannel } from "./channel";
import {
  AgentOp,
  DEFAULT_MAX_EXEC_REPLY_BYTES,
  DEFAULT_MAX_REPLY_BYTES,
  EXEC,
  IDENTITY,
  Identity,
  newId,
  parseReply,
  PING,
  replyId,
  requestLine,
  type ExecResult,
} from "./protocol";

export { createAgentFifos } from "./channel";
export type { ExecResult, Identity } from "./protocol";

/** Added to an exec's own timeout for the round trip (slow under TCG for large outputs). */
const EXEC_GRACE_MS = 10_000;
const DEFAULT_EXEC_TIMEOUT_MS = 60_000;
/** How long a call that timed out may still take to finish writing its request (see AgentChannel). */
const WRITE_DRAIN_MS = 30_000;
/** Deadline of each ping while waiting for the agent: the guest may still be booting. */
const READY_PING_MS = 1000;
/** Pause before opening the FIFOs again while QEMU has not opened them. */
const READY_RETRY_MS = 50;

/** A reply line cap and the option that sets it (named in the too-long error). */
type Cap = { bytes: number; option: string };

export interface AgentClientOptions {
  log?: Logger;
  /** Serialises calls across processes (proper-lockfile on this path). */
  lockFile?: string;
  /** Longest reply line of ping and identity, in bytes (default 4 MiB); beyond it AGENT "too-long". */
  maxReplyBytes?: number;
  /** Longest reply line of exec, in bytes (default 64 MiB: ~48 MiB of stdout + stderr). */
  maxExecReplyBytes?: number;
}

/**
 * The host end of one VM's agent channel. Calls are serialised within a client and, with
 * `lockFile`, across processes. Every call throws TIMEOUT when its deadline passes, AGENT when
 * the agent reports an error (details.reason "agent-error"), answers something malformed
 * ("malformed") or too long ("too-long"), the channel is not open ("not-open", "no-fifos") or
 * closed ("closed", "client-closed"); INVALID_ARGUMENT for bad inputs (details.field).
 * Deadlines are durations in milliseconds.
 */
export class AgentClient {
  private readonly log: Logger;
  private readonly lockFile?: string;
  private readonly replyCap: Cap;
  private readonly execCap: Cap;
  private queue: Promise<unknown> = Promise.resolve();
  private closed = false;
  private active = new Set<AgentChannel>();

  constructor(readonly base: string /* path without .in/.out */, opts: AgentClientOptions = {}) {
    this.log = (opts.log ?? silentLogger).child({ agent: base });
    this.lockFile = opts.lockFile;
    this.replyCap = { bytes: positive(opts.maxReplyBytes, DEFAULT_MAX_REPLY_BYTES, "maxReplyBytes"), option: "maxReplyBytes" };
    this.execCap = { bytes: positive(opts.maxExecReplyBytes, DEFAULT_MAX_EXEC_REPLY_BYTES, "maxExecReplyBytes"), option: "maxExecReplyBytes" };
  }

  /** The agent's version. */
  ping(deadlineMs: number): Promise<string> {
    return this.call(PING, undefined, "ping the agent", deadlineMs, this.replyCap);
  }

  /**
   * Waits until the agent answers a ping: pings of at most 1 s each, again and again (the guest
   * may still be booting; QEMU may not have opened the FIFOs yet) until `deadlineMs`. Returns
   * the milliseconds waited. Throws TIMEOUT at the deadline, AGENT at once when `isAlive` turns
   * false or the agent answers with an error or something malformed.
   */
  async waitReady(deadlineMs: number, isAlive?: () => boolean): Promise<number> {
    const t0 = Date.now();
    const until = t0 + deadlineMs;
    const what = `wait for the agent (agent ${this.base})`;
    const dead = () => (isAlive && !isAlive() ? new ForkvmError("AGENT", `Cannot ${what}: the VM is not running`, { details: { op: "ping", vm: this.base, reason: "vm-gone" } }) : undefined);
    let last: unknown;
    for (;;) {
      const gone = dead();
      if (gone) throw gone;
      const left = until - Date.now();
      if (left <= 0) {
        const seen = last ? ` (last attempt: ${messageOf(last)})` : "";
        throw new ForkvmError("TIMEOUT", `Cannot ${what}: no answer within ${deadlineMs} ms${seen}`, { details: { op: "ping", vm: this.base } });
      }
      try {
        const version = await this.call(PING, undefined, "ping the agent", Math.min(left, READY_PING_MS), this.replyCap, dead);
        this.log.log("debug", "agent ready", { version, waitedMs: Date.now() - t0 });
        return Date.now() - t0;
      } catch (err) {
        if (this.closed || !(err instanceof ForkvmError)) throw err;
        const reason = err.details.reason;
        const notYet = err.code === "AGENT" && (reason === "not-open" || reason === "no-fifos" || reason === "closed");
        if (err.code !== "TIMEOUT" && !notYet) throw err;
        last = err;
        if (notYet) await sleep(READY_RETRY_MS);
      }
    }
  }

  /**
   * Runs `argv` exactly (no shell) in the guest with `stdin`, killed after `timeoutMs`
   * (default 60 s; 0 = no limit): exit code 124 or 143 when it was killed, 127 when not found.
   */
  exec(argv: string[], opts: { stdin?: Buffer | string; timeoutMs?: number } = {}): Promise<ExecResult> {
    const timeoutMs = opts.timeoutMs ?? DEFAULT_EXEC_TIMEOUT_MS;
    const deadline = timeoutMs === 0 ? Infinity : timeoutMs + EXEC_GRACE_MS;
    const action = `run ${JSON.stringify(Array.isArray(argv) ? argv[0] : argv)} in the guest`;
    return this.call(EXEC, { argv, stdin: opts.stdin, timeoutMs }, action, deadline, this.execCap);
  }

  /** Gives the guest its identity: hostname, MAC of eth0, clock, RNG seed, machine id. */
  identity(id: Identity, deadlineMs: number): Promise<void> {
    return this.call(IDENTITY, id, "set the guest identity", deadlineMs, this.replyCap);
  }

  /**
   * Ends every call in flight (they fail with AGENT) and refuses new ones. Closes the FIFOs at
   * once, even under a request still being written.
   */
  close(): void {
    this.closed = true;
    for (const ch of this.active) {
      ch.fail(new ForkvmError("AGENT", "the client was closed", { details: { reason: "client-closed" } }));
      ch.destroy();
    }
  }

  // -------------------------------------------------------------------------------------------

  /**
   * One request and its reply. `action` says what the call does ("Cannot <action> ..."); `watch`,
   * checked every 100 ms, ends the call at once with the error it returns.
   */
  private call<Req, Res>(op: AgentOp<Req, Res>, req: Req, action: string, deadlineMs: number, cap: Cap, watch?: () => ForkvmError | undefined): Promise<Res> {
    const id = newId();
    let line: string;
    try {
      line = requestLine(id, op, req);
    } catch (err) {
      return Promise.reject(err);
    }
    const what = `${action} (agent ${this.base})`;
    const fail = (err: ForkvmError) => new ForkvmError(err.code, `Cannot ${what}: ${err.message}`, { cause: err, details: { ...err.details, op: op.name, vm: this.base } });
    return this.serial(async (hold) => {
      const until = Date.now() + deadlineMs;
      const release = await this.lock(until, what);
      let closed: Promise<void> = Promise.resolve();
      try {
        if (this.closed) throw this.closedError();
        const started = Date.now();
        let settle!: (err: ForkvmError | undefined, value?: Res) => void;
        const result = new Promise<Res>((resolve, reject) => {
          let settled = false;
          settle = (err, value) => {
            if (settled) return;
            settled = true;
            if (err) reject(err);
            else resolve(value as Res);
          };
        });
        let ch: AgentChannel;
        try {
          ch = AgentChannel.open(this.base, cap.bytes, {
            onLine: (l) => {
              if (l.length === 0) return; // requests and replies are separated by blank lines
              if (replyId(l) !== id) {
                this.log.log("debug", "discarding a stale agent line", { bytes: l.length });
                return;
              }
              try {
                settle(undefined, parseReply(l, op));
              } catch (err) {
                settle(err instanceof ForkvmError ? fail(err) : fail(new ForkvmError("AGENT", `malformed reply: ${messageOf(err)}`, { cause: err, details: { reason: "malformed" } })));
              }
            },
            onOverflow: (head) => {
              if (replyId(head) !== id) {
                this.log.log("debug", "discarding a stale agent line longer than the cap", { limit: cap.bytes });
                return;
              }
              settle(fail(new ForkvmError("AGENT", `the reply is longer than ${cap.bytes} bytes (the client's ${cap.option})`, { details: { reason: "too-long", limit: cap.bytes } })));
            },
            onFailure: (err) => settle(fail(err)),
          });
        } catch (err) {
          throw err instanceof ForkvmError ? fail(err) : err;
        }
        this.active.add(ch);
        const timer = Number.isFinite(until)
          ? setTimeout(() => settle(new ForkvmError("TIMEOUT", `Cannot ${what}: no answer within ${until - started} ms`, { details: { op: op.name, vm: this.base } })), Math.max(0, until - Date.now()))
          : undefined;
        const watcher = watch
          ? setInterval(() => {
              const e = watch();
              if (e) settle(e);
            }, 100)
          : undefined;
        void ch.send(line);
        closed = result
          .then(
            () => undefined,
            () => undefined,
          )
          .then(() => {
            clearTimeout(timer);
            clearInterval(watcher);
            return ch.close(WRITE_DRAIN_MS).finally(() => this.active.delete(ch));
          });
        return await result;
      } finally {
        hold(closed.then(release));
      }
    });
  }

  /**
   * Runs `fn` after every earlier call of this client has finished. `fn` may `hold` the slot
   * past its own result (a request still being written, the lock): the caller gets its answer
   * or error at once, the next call waits.
   */
  private serial<T>(fn: (hold: (until: Promise<unknown>) => void) => Promise<T>): Promise<T> {
    if (this.closed) return Promise.reject(this.closedError());
    let held: Promise<unknown> = Promise.resolve();
    const run = this.queue.then(() => fn((p) => (held = p)));
    this.queue = run.then(() => held, () => held).catch(() => undefined);
    return run;
  }

  private closedError(): ForkvmError {
    return new ForkvmError("AGENT", `Cannot call the agent of ${this.base}: the client was closed`, { details: { reason: "client-closed", vm: this.base } });
  }

  private async lock(until: number, what: string): Promise<() => Promise<void>> {
    if (!this.lockFile) return async () => {};
    const file = this.lockFile;
    for (;;) {
      try {
        const release = await lockfile.lock(file, {
          realpath: false,
          lockfilePath: file,
          stale: 15_000,
          update: 5_000,
          retries: 0,
          onCompromised: (err) => this.log.log("warn", "agent lock compromised", { error: err.message }),
        });
        return () => release().catch(() => undefined);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "ELOCKED") {
          throw new ForkvmError("AGENT", `Cannot ${what}: cannot take the agent lock ${file}: ${messageOf(err)}`, { cause: err, details: { reason: "lock" } });
        }
        if (Date.now() >= until) {
          throw new ForkvmError("TIMEOUT", `Cannot ${what}: another call held the agent lock ${file} until the deadline`, { details: { vm: this.base } });
        }
        await sleep(20 + Math.random() * 30);
      }
    }
  }
}

function positive(v: number | undefined, dflt: number, field: string): number {
  if (v === undefined) return dflt;
  if (!Number.isSafeInteger(v) || v < 1) throw new ForkvmError("INVALID_ARGUMENT", `Cannot create the agent client: ${field} must be a positive whole number of bytes, got ${v}`, { details: { field } });
  return v;
}
