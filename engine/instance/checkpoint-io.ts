// Migration streams between QEMU and files with no process in between: QEMU's seccomp sandbox
// forbids it to fork (`exec:cat`), so the engine holds the other end of a unix socket.
// receive: the engine listens, QEMU `migrate`s into it; send: QEMU listens (`migrate-incoming`).
import * as fs from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import { randomBytes } from "node:crypto";
import { pipeline } from "node:stream/promises";
import { ForkvmError, messageOf } from "../errors";
import { fsyncDir } from "../util/atomic-write";
import { grantQemu, type QemuUser } from "../qemu/run-as";

export interface Receiver {
  /** What to give QEMU's `migrate` command. */
  uri: string;
  /** Resolves with the bytes written once the stream ended and the file is in place (fsynced, renamed). */
  done: Promise<number>;
  /** Stops listening and, unless the file is in place, drops what was received. Safe to repeat. */
  close(): void;
}

/** O_EXCL | O_NOFOLLOW: the file is never one (or a link) someone else put there. */
const CREATE_NEW = fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW;

/**
 * Listens on `sock` for one QEMU migration stream and writes it to `file` (mode 0600). Atomic
 * (the default): a temp file (`<file>.tmp-<pid>-<hex>`, what gc knows as a dead write's), fsync,
 * rename, so `file` is whole or absent; otherwise straight into `file` (made anew), for a file
 * that only this process reads afterwards. `qemu`: the user QEMU runs as (qemu/run-as.ts), given
 * write on the socket. `done` rejects with MIGRATION when the stream breaks or the file cannot be
 * written.
 */
export async function receiveToFile(sock: string, file: string, opts: { atomic?: boolean; qemu?: QemuUser } = {}): Promise<Receiver> {
  fs.rmSync(sock, { force: true });
  const atomic = opts.atomic ?? true;
  const tmp = atomic ? `${file}.tmp-${process.pid}-${randomBytes(4).toString("hex")}` : file;
  const server = net.createServer();
  let conn: net.Socket | undefined;
  let finished = false;
  let settle: { resolve: (n: number) => void; reject: (e: Error) => void };
  const done = new Promise<number>((resolve, reject) => (settle = { resolve, reject }));
  done.catch(() => undefined); // the caller may never await it (QEMU failed first)
  const fail = (err: unknown) => {
    fs.rmSync(tmp, { force: true });
    settle.reject(new ForkvmError("MIGRATION", `Cannot receive the migration stream into ${file}: ${messageOf(err)}`, { cause: err }));
  };
  server.on("connection", (c) => {
    if (conn) return void c.destroy(); // one stream per receiver
    conn = c;
    server.close();
    let out: fs.WriteStream;
    try {
      if (!atomic) fs.rmSync(file, { force: true });
      out = fs.createWriteStream("", { fd: fs.openSync(tmp, CREATE_NEW, 0o600) });
    } catch (err) {
      c.destroy();
      return fail(err);
    }
    pipeline(c, out).then(() => {
      const bytes = fs.statSync(tmp).size;
      if (atomic) {
        const fd = fs.openSync(tmp, "r");
        try { fs.fsyncSync(fd); } finally { fs.closeSync(fd); }
        fs.renameSync(tmp, file);
        fsyncDir(path.dirname(file));
      }
      finished = true;
      settle.resolve(bytes);
    }).catch(fail);
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(sock, () => { server.off("error", reject); resolve(); });
  }).catch((err) => {
    throw new ForkvmError("MIGRATION", `Cannot listen on ${sock} for a migration stream: ${messageOf(err)}`, { cause: err });
  });
  // A QEMU that dropped root connects with its group (qemu/run-as.ts): told the URI only after this.
  grantQemu(opts.qemu, sock, "rw");
  server.on("error", fail);
  return {
    uri: `unix:${sock}`,
    done,
    close() {
      server.close();
      fs.rmSync(sock, { force: true });
      if (!finished) {
        conn?.destroy();
        fail(new Error("closed before the stream ended"));
      }
    },
  };
}

/**
 * Writes a checkpoint or a stream (bytes, or a file by path) into QEMU's incoming migration
 * socket and closes it. Throws MIGRATION when the socket cannot be reached or breaks.
 */
export function sendCheckpoint(sock: string, data: Buffer | { file: string }): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const fail = (err: Error) => reject(new ForkvmError("MIGRATION", `Cannot send the checkpoint to ${sock}: ${err.message}`, { cause: err }));
    const s = net.createConnection(sock, () => {
      if (Buffer.isBuffer(data)) s.end(data);
      else pipeline(fs.createReadStream(data.file), s).catch(fail);
    });
    s.once("error", fail);
    s.once("close", (hadError) => { if (!hadError) resolve(); });
  });
}
