// Host side of the guest agent protocol over the virtio-serial FIFOs of one VM
// (<base>.in host→guest, <base>.out guest→host): one call at a time, each with a deadline.
// Protocol: request "<id> <op> <arg>..." (free text base64, "-" = empty); reply "<id> ok ..." | "<id> err <b64>".
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as net from "node:net";
import * as lockfile from "proper-lockfile";
import { z } from "zod";
import { ForkvmError, messageOf } from "../errors";
import { Logger, silentLogger } from "../log";

/** Longest reply line accepted (a base64 stdout+stderr); beyond it the call fails with AGENT. */
export const MAX_REPLY_BYTES = 256 * 1024 * 1024;
/** Added to an exec's own timeout for the round trip (slow under TCG for large outputs). */
const EXEC_GRACE_MS = 10_000;
const DEFAULT_EXEC_TIMEOUT_MS = 60_000;
/** How long a call that timed out may still take to finish writing its request (see Channel). */
const WRITE_DRAIN_MS = 30_000;

const Id = z.string().regex(/^[A-Za-z0-9_-]+$/);
const B64 = z.string().regex(/^(-|(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?)$/, "not base64");
const Reply = z.union([
  z.tuple([Id, z.literal("ok")]).rest(z.string()),
  z.tuple([Id, z.literal("err"), B64]),
]);
const PingFields = z.tuple([z.literal("pong"), z.string().regex(/^[A-Za-z0-9._-]+$/)]);
const ExecFields = z.tuple([z.string().regex(/^\d{1,3}$/), B64, B64]);
const IdentityFields = z.tuple([]);

const MAC_RE = /^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/;
const HOSTNAME_RE = /^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;
const MACHINE_ID_RE = /^[0-9a-f]{32}$/;

export interface ExecResult {
  exitCode: number;
  stdout: Buffer;
  stderr: Buffer;
}

export interface Identity {
  hostname: string;
  mac: string;
  /** Defaults to now; fractions are dropped. */
  epochSeconds?: number;
  /** Bytes written to the guest's /dev/urandom; defaults to 64 random bytes. */
  seed?: Buffer;
  /** 32 lowercase hex digits for /etc/machine-id; defaults to a random one. */
  machineId?: string;
}

/**
 * Creates the two FIFOs QEMU's `-chardev pipe,path=<base>` opens: <base>.in and <base>.out
 * (mode 0600). Existing FIFOs are kept; anything else at those paths is replaced.
 * Must run before QEMU starts. Throws HOST when mkfifo fails.
 */
export async function createAgentFifos(base: string): Promise<void> {
  for (const p of [`${base}.in`, `${base}.out`]) {
    const st = fs.lstatSync(p, { throwIfNoEntry: false });
    if (st?.isFIFO()) continue;
    if (st) fs.rmSync(p, { force: true });
    await new Promise<void>((resolve, reject) => {
      execFile("mkfifo", ["-m", "600", p], (err, _out, stderr) => {
        if (!err) return resolve();
        reject(new ForkvmError("HOST", `Cannot create agent FIFO ${p}: ${String(stderr).trim() || err.message}`, { cause: err, details: { stderr: String(stderr) } }));
      });
    });
  }
}

/**
 * One open pair of FIFOs: a libuv pipe handle on each (never fs streams, whose blocking reads
 * would tie up the thread pool). Reads only while a call is in flight, so concurrent clients
 * (under the lock) never split each other's replies.
 */
class Channel {
  private readonly rx: net.Socket;
  private readonly tx: net.Socket;
  private chunks: Buffer[] = [];
  private size = 0;
  private writes: Promise<void>[] = [];
  private readonly destroyed: Promise<void>;
  onLine: (line: Buffer) => void = () => {};
  onFailure: (err: ForkvmError) => void = () => {};

  /** Throws ENXIO-coded errors when QEMU has not opened the FIFOs (not running). */
  constructor(readonly base: string) {
    const { O_RDONLY, O_WRONLY, O_NONBLOCK } = fs.constants;
    const rxFd = fs.openSync(`${base}.out`, O_RDONLY | O_NONBLOCK);
    let txFd: number;
    try {
      txFd = fs.openSync(`${base}.in`, O_WRONLY | O_NONBLOCK);
    } catch (err) {
      fs.closeSync(rxFd);
      throw err;
    }
    this.rx = new net.Socket({ fd: rxFd, readable: true, writable: false });
    this.tx = new net.Socket({ fd: txFd, readable: false, writable: true });
    this.destroyed = new Promise((r) => this.tx.once("close", () => r()));
    this.rx.on("data", (b: Buffer) => this.take(b));
    // No writer left on <base>.out: QEMU (which holds it open read-write) is gone.
    this.rx.on("end", () => this.onFailure(new ForkvmError("AGENT", "the agent channel was closed: QEMU is not running", { details: { reason: "closed" } })));
    this.rx.on("error", (e) => this.onFailure(new ForkvmError("AGENT", `cannot read the agent channel: ${e.message}`, { cause: e, details: { reason: "io" } })));
    this.tx.on("error", (e) => this.onFailure(new ForkvmError("AGENT", `cannot write the agent channel: ${e.message}`, { cause: e, details: { reason: "io" } })));
  }

  send(line: string): Promise<void> {
    const done = new Promise<void>((resolve) => this.tx.write(line, () => resolve()));
    this.writes.push(done);
    return done;
  }

  /**
   * Closes both ends once every request is fully written (or after `graceMs`). A request
   * abandoned half-written would be glued to the next one; finishing it keeps lines whole.
   */
  async close(graceMs: number): Promise<void> {
    this.rx.removeAllListeners("data");
    this.rx.destroy();
    if (this.writes.length) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([Promise.all(this.writes), new Promise((r) => (timer = setTimeout(r, graceMs))), this.destroyed]);
      clearTimeout(timer);
    }
    this.tx.destroy();
  }

  /** Closes both ends at once, even with a request half-written. */
  destroy(): void {
    this.rx.destroy();
    this.tx.destroy();
  }

  private take(b: Buffer): void {
    let start = 0;
    for (let nl = b.indexOf(10, start); nl >= 0; nl = b.indexOf(10, start)) {
      const piece = b.subarray(start, nl);
      const line = this.chunks.length ? Buffer.concat([...this.chunks, piece]) : piece;
      this.chunks = [];
      this.size = 0;
      start = nl + 1;
      this.onLine(line);
    }
    if (start < b.length) {
      this.chunks.push(b.subarray(start));
      this.size += b.length - start;
      if (this.size > MAX_REPLY_BYTES) {
        this.chunks = [];
        this.size = 0;
        this.onFailure(new ForkvmError("AGENT", `a reply is longer than ${MAX_REPLY_BYTES} bytes`, { details: { reason: "too-long" } }));
      }
    }
  }
}

/** Encodes free text as the protocol does: base64, "-" for empty. */
function b64(data: Buffer | string): string {
  const s = Buffer.from(data).toString("base64");
  return s === "" ? "-" : s;
}

function unb64(s: string): Buffer {
  return s === "-" ? Buffer.alloc(0) : Buffer.from(s, "base64");
}

function newId(): string {
  return randomBytes(9).toString("base64url");
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Conversation<T> {
  /**
   * Called once the channel is open: sends the request(s) (`send` returns the fresh id it
   * used); may call `fail` later; returns what to stop when the call settles.
   */
  start(send: (words: string) => string, fail: (err: ForkvmError) => void): (() => void) | void;
  /** Ids that belong to this call; lines with other ids are stale and discarded. */
  ids: Set<string>;
  /** Turns the (validated) reply fields into the result; throws AGENT when malformed. */
  parse(fields: string[]): T;
}

/**
 * The host end of one VM's agent channel. Calls are serialised within a client and, with
 * `lockFile`, across processes. Every call throws TIMEOUT when its deadline passes, AGENT when
 * the agent reports an error, answers something malformed or the channel is closed,
 * INVALID_ARGUMENT for bad inputs. Deadlines are durations in milliseconds.
 */
export class AgentClient {
  private readonly log: Logger;
  private readonly lockFile?: string;
  private queue: Promise<unknown> = Promise.resolve();
  private closed = false;
  private active = new Set<Channel>();

  constructor(readonly base: string /* path without .in/.out */, opts: { log?: Logger; lockFile?: string } = {}) {
    this.log = (opts.log ?? silentLogger).child({ agent: base });
    this.lockFile = opts.lockFile;
  }

  /** The agent's version. */
  ping(deadlineMs: number): Promise<string> {
    const ids = new Set<string>();
    return this.call("ping", "ping the agent", deadlineMs, {
      ids,
      start: (send) => void ids.add(send("ping")),
      parse: (fields) => PingFields.parse(fields)[1],
    });
  }

  /**
   * Waits until the agent answers a ping, resending every second (the guest may still be
   * booting; QEMU may not have opened the FIFOs yet). Returns the milliseconds waited. Fails
   * at once with AGENT when `isAlive` turns false.
   */
  async waitReady(deadlineMs: number, isAlive?: () => boolean): Promise<number> {
    const t0 = Date.now();
    const until = t0 + deadlineMs;
    const what = `wait for the agent (agent ${this.base})`;
    const dead = () => new ForkvmError("AGENT", `Cannot ${what}: the VM is not running`, { details: { op: "ping", vm: this.base } });
    return this.serial(async (hold) => {
      const release = await this.lock(until, what);
      let closed: Promise<void> = Promise.resolve();
      try {
        for (;;) {
          if (isAlive && !isAlive()) throw dead();
          if (Date.now() >= until) throw new ForkvmError("TIMEOUT", `Cannot ${what}: no answer within ${deadlineMs} ms`, { details: { op: "ping", vm: this.base } });
          let ch: Channel;
          try {
            ch = this.open();
          } catch (err) {
            if (this.closed) throw err;
            await sleep(50); // QEMU has not opened the FIFOs yet (ENXIO), or they are not there yet
            continue;
          }
          const ids = new Set<string>();
          try {
            const call = this.converse(ch, what, "ping", until, {
              ids,
              start: (send, fail) => {
                ids.add(send("ping"));
                const resend = setInterval(() => ids.add(send("ping")), 1000);
                const watch = setInterval(() => isAlive && !isAlive() && fail(dead()), 100);
                return () => {
                  clearInterval(resend);
                  clearInterval(watch);
                };
              },
              parse: (fields) => PingFields.parse(fields)[1],
            });
            closed = call.closed;
            const version = await call.result;
            this.log.log("debug", "agent ready", { version, waitedMs: Date.now() - t0 });
            return Date.now() - t0;
          } catch (err) {
            // EOF on <base>.out before QEMU opened it: try again; anything else is final.
            if (err instanceof ForkvmError && err.details.reason === "closed" && !this.closed) {
              await closed;
              await sleep(50);
              continue;
            }
            throw err;
          }
        }
      } finally {
        hold(closed.then(release));
      }
    });
  }

  /**
   * Runs `argv` exactly (no shell) in the guest with `stdin`, killed after `timeoutMs`
   * (default 60 s; 0 = no limit): exit code 124 or 143 when it was killed, 127 when not found.
   */
  exec(argv: string[], opts: { stdin?: Buffer | string; timeoutMs?: number } = {}): Promise<ExecResult> {
    if (!Array.isArray(argv) || argv.length === 0 || !argv[0]) {
      return Promise.reject(new ForkvmError("INVALID_ARGUMENT", "Cannot exec in the guest: argv must be a non-empty array with a command first", { details: { field: "argv" } }));
    }
    if (argv.some((a) => typeof a !== "string" || a.includes("\0"))) {
      return Promise.reject(new ForkvmError("INVALID_ARGUMENT", "Cannot exec in the guest: argv entries must be strings without NUL bytes", { details: { field: "argv" } }));
    }
    const timeoutMs = opts.timeoutMs ?? DEFAULT_EXEC_TIMEOUT_MS;
    if (!Number.isFinite(timeoutMs) || timeoutMs < 0) {
      return Promise.reject(new ForkvmError("INVALID_ARGUMENT", `Cannot exec in the guest: timeoutMs must be >= 0, got ${timeoutMs}`, { details: { field: "timeoutMs" } }));
    }
    const seconds = Math.ceil(timeoutMs / 1000);
    const words = ["exec", String(seconds), opts.stdin === undefined ? "-" : b64(opts.stdin), ...argv.map(b64)].join(" ");
    const ids = new Set<string>();
    return this.call("exec", `run ${JSON.stringify(argv[0])} in the guest`, timeoutMs === 0 ? Infinity : timeoutMs + EXEC_GRACE_MS, {
      ids,
      start: (send) => void ids.add(send(words)),
      parse: (fields) => {
        const [code, out, err] = ExecFields.parse(fields);
        return { exitCode: Number(code), stdout: unb64(out), stderr: unb64(err) };
      },
    });
  }

  /** Gives the guest its identity: hostname, MAC of eth0, clock, RNG seed, machine id. */
  identity(id: Identity, deadlineMs: number): Promise<void> {
    if (!HOSTNAME_RE.test(id.hostname)) {
      return Promise.reject(new ForkvmError("INVALID_ARGUMENT", `Cannot set the guest identity: hostname "${id.hostname}" is not a valid host name`, { details: { field: "hostname" } }));
    }
    if (!MAC_RE.test(id.mac)) {
      return Promise.reject(new ForkvmError("INVALID_ARGUMENT", `Cannot set the guest identity: mac "${id.mac}" is not xx:xx:xx:xx:xx:xx`, { details: { field: "mac" } }));
    }
    const epoch = Math.floor(id.epochSeconds ?? Date.now() / 1000);
    if (!Number.isFinite(epoch) || epoch < 0) {
      return Promise.reject(new ForkvmError("INVALID_ARGUMENT", `Cannot set the guest identity: epochSeconds must be >= 0, got ${id.epochSeconds}`, { details: { field: "epochSeconds" } }));
    }
    const machineId = id.machineId ?? randomBytes(16).toString("hex");
    if (!MACHINE_ID_RE.test(machineId)) {
      return Promise.reject(new ForkvmError("INVALID_ARGUMENT", `Cannot set the guest identity: machineId must be 32 lowercase hex digits`, { details: { field: "machineId" } }));
    }
    const seed = id.seed ?? randomBytes(64);
    const words = ["identity", b64(id.hostname), id.mac.toLowerCase(), String(epoch), b64(seed), machineId].join(" ");
    const ids = new Set<string>();
    return this.call("identity", "set the guest identity", deadlineMs, {
      ids,
      start: (send) => void ids.add(send(words)),
      parse: (fields) => {
        IdentityFields.parse(fields);
      },
    });
  }

  /**
   * Ends every call in flight (they fail with AGENT) and refuses new ones. Closes the FIFOs at
   * once, even under a request still being written.
   */
  close(): void {
    this.closed = true;
    for (const ch of this.active) {
      ch.onFailure(new ForkvmError("AGENT", "the client was closed", { details: { reason: "client-closed" } }));
      ch.destroy();
    }
  }

  // -------------------------------------------------------------------------------------------

  /** One request and its reply: `op` names the operation, `action` says what it does. */
  private call<T>(op: string, action: string, deadlineMs: number, conv: Conversation<T>): Promise<T> {
    const what = `${action} (agent ${this.base})`;
    return this.serial(async (hold) => {
      const until = Date.now() + deadlineMs;
      const release = await this.lock(until, what);
      let closed: Promise<void> = Promise.resolve();
      try {
        let ch: Channel;
        try {
          ch = this.open();
        } catch (err) {
          const code = (err as NodeJS.ErrnoException).code;
          const why = code === "ENXIO" ? "QEMU has not opened the agent channel (not running?)" : code === "ENOENT" ? "the agent FIFOs do not exist" : messageOf(err);
          throw new ForkvmError("AGENT", `Cannot ${what}: ${why}`, { cause: err, details: { op, vm: this.base } });
        }
        const call = this.converse(ch, what, op, until, conv);
        closed = call.closed;
        return await call.result;
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
    if (this.closed) return Promise.reject(new ForkvmError("AGENT", `Cannot call the agent of ${this.base}: the client was closed`));
    let held: Promise<unknown> = Promise.resolve();
    const run = this.queue.then(() => fn((p) => (held = p)));
    this.queue = run.then(() => held, () => held).catch(() => undefined);
    return run;
  }

  private open(): Channel {
    if (this.closed) throw new ForkvmError("AGENT", `Cannot call the agent of ${this.base}: the client was closed`);
    return new Channel(this.base);
  }

  /**
   * Sends the request(s) and waits for the reply with one of the call's ids, until `until`.
   * `result` settles at the reply or the deadline; `closed` once the channel is closed, which
   * waits (at most WRITE_DRAIN_MS) for the request to be written whole: a request abandoned
   * half-written would be glued to the next one.
   */
  private converse<T>(ch: Channel, what: string, op: string, until: number, conv: Conversation<T>): { result: Promise<T>; closed: Promise<void> } {
    this.active.add(ch);
    const started = Date.now();
    let timer: NodeJS.Timeout | undefined;
    let stop: (() => void) | void;
    const result = new Promise<T>((resolve, reject) => {
      let settled = false;
      const finish = (err: unknown, value?: T) => {
        if (settled) return;
        settled = true;
        if (err) reject(err);
        else resolve(value as T);
      };
      ch.onFailure = (err) => finish(new ForkvmError(err.code, `Cannot ${what}: ${err.message}`, { cause: err, details: { ...err.details, op, vm: this.base } }));
      ch.onLine = (line) => {
        if (line.length === 0) return; // requests and replies are separated by blank lines
        const text = line.toString("latin1");
        const words = text.split(" ");
        if (!conv.ids.has(words[0] ?? "")) {
          this.log.log("debug", "discarding a stale agent line", { head: text.slice(0, 40) });
          return;
        }
        const parsed = Reply.safeParse(words);
        if (!parsed.success) {
          return finish(new ForkvmError("AGENT", `Cannot ${what}: malformed reply "${text.slice(0, 80)}"`, { details: { op, vm: this.base, issues: parsed.error.issues } }));
        }
        const [, status, ...fields] = parsed.data;
        if (status === "err") {
          const msg = unb64(fields[0] as string).toString("utf8") || "unknown error";
          return finish(new ForkvmError("AGENT", `Cannot ${what}: ${msg}`, { details: { op, vm: this.base } }));
        }
        try {
          finish(undefined, conv.parse(fields as string[]));
        } catch (err) {
          finish(new ForkvmError("AGENT", `Cannot ${what}: malformed reply "${text.slice(0, 80)}": ${messageOf(err)}`, { cause: err, details: { op, vm: this.base } }));
        }
      };
      if (Number.isFinite(until)) {
        const left = Math.max(0, until - Date.now());
        timer = setTimeout(() => finish(new ForkvmError("TIMEOUT", `Cannot ${what}: no answer within ${until - started} ms`, { details: { op, vm: this.base } })), left);
      }
      try {
        stop = conv.start(
          (words) => {
            const id = newId();
            // The leading newline ends any partial line an earlier client may have left.
            void ch.send(`\n${id} ${words}\n`);
            return id;
          },
          (err) => finish(err),
        );
      } catch (err) {
        finish(err);
      }
    });
    const closed = result.then(
      () => undefined,
      () => undefined,
    ).then(() => {
      clearTimeout(timer);
      stop?.();
      return ch.close(WRITE_DRAIN_MS).finally(() => this.active.delete(ch));
    });
    return { result, closed };
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
          throw new ForkvmError("AGENT", `Cannot ${what}: cannot take the agent lock ${file}: ${messageOf(err)}`, { cause: err });
        }
        if (Date.now() >= until) {
          throw new ForkvmError("TIMEOUT", `Cannot ${what}: another call held the agent lock ${file} until the deadline`, { details: { vm: this.base } });
        }
        await sleep(20 + Math.random() * 30);
      }
    }
  }
}
