// The FIFO pair of one VM's agent (QEMU's `-chardev pipe,path=<base>`: <base>.in host→guest,
// <base>.out guest→host): creating the FIFOs, opening them, line framing with a bounded buffer,
// and closing after the last request is written whole. No exception leaves a socket handler.
import * as fs from "node:fs";
import * as net from "node:net";
import { ForkvmError, messageOf } from "../errors";
import { LineFramer } from "../util/line-framer";
import { run } from "../util/run";

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
    await run("mkfifo", ["-m", "600", p], { what: `create agent FIFO ${p}`, timeoutMs: 10_000 });
  }
}

export interface ChannelHandlers {
  /** A complete line from the guest (without its newline). */
  onLine: (line: Buffer) => void;
  /** A line passed the cap: its first bytes; the rest of it is being discarded. */
  onOverflow: (head: Buffer) => void;
  /** The channel cannot be used any more (details.reason "closed" or "io"). */
  onFailure: (err: ForkvmError) => void;
}

/**
 * One open pair of FIFOs: a libuv pipe handle on each (never fs streams, whose blocking reads
 * would tie up the thread pool). Opened for one call and closed after it, so concurrent
 * clients (under the lock) never split each other's replies.
 */
export class AgentChannel {
  private readonly rx: net.Socket;
  private readonly tx: net.Socket;
  private readonly framer: LineFramer;
  private writes: Promise<void>[] = [];
  private readonly txClosed: Promise<void>;
  private h: ChannelHandlers | undefined;

  /**
   * Opens both FIFOs without blocking. Throws AGENT with details.reason "not-open" when QEMU
   * has not opened them (ENXIO: not running), "no-fifos" when they do not exist, "io" otherwise.
   */
  static open(base: string, maxLineBytes: number, handlers: ChannelHandlers): AgentChannel {
    const { O_RDONLY, O_WRONLY, O_NONBLOCK } = fs.constants;
    let rxFd: number | undefined;
    try {
      rxFd = fs.openSync(`${base}.out`, O_RDONLY | O_NONBLOCK);
      const txFd = fs.openSync(`${base}.in`, O_WRONLY | O_NONBLOCK);
      return new AgentChannel(rxFd, txFd, maxLineBytes, handlers);
    } catch (err) {
      if (rxFd !== undefined) fs.closeSync(rxFd);
      const code = (err as NodeJS.ErrnoException).code;
      const [reason, why] =
        code === "ENXIO" ? ["not-open", "QEMU has not opened the agent channel (not running?)"] : code === "ENOENT" ? ["no-fifos", "the agent FIFOs do not exist"] : ["io", messageOf(err)];
      throw new ForkvmError("AGENT", why, { cause: err, details: { reason } });
    }
  }

  private constructor(rxFd: number, txFd: number, maxLineBytes: number, handlers: ChannelHandlers) {
    this.h = handlers;
    this.framer = new LineFramer({ maxLineBytes, onLine: (l) => this.h?.onLine(l), onOverflow: (head) => this.h?.onOverflow(head) });
    this.rx = new net.Socket({ fd: rxFd, readable: true, writable: false });
    this.tx = new net.Socket({ fd: txFd, readable: false, writable: true });
    this.txClosed = new Promise((r) => this.tx.once("close", () => r()));
    this.rx.on("data", (b: Buffer) => {
      try {
        this.framer.push(b);
      } catch (err) {
        this.fail(new ForkvmError("AGENT", `cannot handle a line from the agent: ${messageOf(err)}`, { cause: err, details: { reason: "io" } }));
      }
    });
    // No writer left on <base>.out: QEMU (which holds it open read-write) is gone.
    this.rx.on("end", () => this.fail(new ForkvmError("AGENT", "the agent channel was closed: QEMU is not running", { details: { reason: "closed" } })));
    // The error listeners stay for the life of the sockets: an unheard 'error' would crash the process.
    this.rx.on("error", (e) => this.fail(new ForkvmError("AGENT", `cannot read the agent channel: ${e.message}`, { cause: e, details: { reason: "io" } })));
    this.tx.on("error", (e) => this.fail(new ForkvmError("AGENT", `cannot write the agent channel: ${e.message}`, { cause: e, details: { reason: "io" } })));
  }

  /** Queues `line` for writing; resolves once it is written whole (or the channel is closed). */
  send(line: string): Promise<void> {
    const done = new Promise<void>((resolve) => {
      try {
        this.tx.write(line, () => resolve());
      } catch {
        resolve(); // written after destroy: the 'error' listener reports it
      }
    });
    this.writes.push(done);
    return done;
  }

  /** Fails the channel's user with `err` (once) and stops delivering lines. */
  fail(err: ForkvmError): void {
    const h = this.h;
    this.h = undefined;
    try {
      h?.onFailure(err);
    } catch {
      /* a handler must not throw; if it does, nothing else is owed to it */
    }
  }

  /**
   * Stops reading, then closes the write end once every request is fully written (or after
   * `graceMs`). A request abandoned half-written would be glued to the next one.
   */
  async close(graceMs: number): Promise<void> {
    this.h = undefined;
    this.rx.removeAllListeners("data");
    this.rx.destroy();
    this.framer.reset();
    if (this.writes.length) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([Promise.all(this.writes), new Promise((r) => (timer = setTimeout(r, graceMs))), this.txClosed]);
      clearTimeout(timer);
    }
    this.tx.destroy();
  }

  /** Closes both ends at once, even with a request half-written. */
  destroy(): void {
    this.h = undefined;
    this.rx.destroy();
    this.tx.destroy();
  }
}
