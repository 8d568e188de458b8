// Which user QEMU runs as (the one decision: -runas forkvm-qemu or root) and the access that user
// gets: search on the object and memory directories, read-write on the files QEMU opens after it
// dropped root (a forked child's disks, a capture's overlay, the sockets the engine listens on).
import * as fs from "node:fs";
import * as path from "node:path";
import { ForkvmError } from "../errors";

/** The unprivileged account scripts/setup.sh creates (`useradd --system`, its own group). */
export const QEMU_USER = "forkvm-qemu";

export interface QemuUser {
  name: string;
  uid: number;
  /** Its primary group: QEMU runs with this gid only (QEMU calls initgroups); files it reopens get this group. */
  gid: number;
}

/** `name`'s uid and primary gid from passwd(5) text, or undefined when it has no entry. */
export function parsePasswd(text: string, name: string): QemuUser | undefined {
  for (const line of text.split("\n")) {
    const f = line.split(":");
    if (f[0] === name && f.length >= 4 && /^\d+$/.test(f[2]!) && /^\d+$/.test(f[3]!)) return { name, uid: Number(f[2]), gid: Number(f[3]) };
  }
  return undefined;
}

function lookup(name: string): QemuUser | undefined {
  try {
    return parsePasswd(fs.readFileSync("/etc/passwd", "utf8"), name);
  } catch {
    return undefined;
  }
}

/** Whether `user` may search `dir` by its mode bits (others' x, or group x with its group). */
function searchable(dir: string, user: QemuUser): boolean {
  try {
    const st = fs.statSync(dir);
    return !!(st.mode & 0o001) || (st.gid === user.gid && !!(st.mode & 0o010)) || (st.uid === user.uid && !!(st.mode & 0o100));
  } catch {
    return true; // not there yet: forkvm creates it (and grants it)
  }
}

/** The existing ancestors of `dir` (forkvm creates and grants `dir` and what is missing above it). */
function ancestors(dir: string): string[] {
  const out: string[] = [];
  for (let d = path.dirname(path.resolve(dir)); ; d = path.dirname(d)) {
    out.push(d);
    if (d === path.dirname(d)) return out;
  }
}

/** The primary group of the forkvm-qemu account when it exists (and is not root's): the one group a memory directory may grant. */
export function qemuAccountGid(): number | undefined {
  const user = lookup(QEMU_USER);
  return user && user.uid !== 0 && user.gid !== 0 ? user.gid : undefined;
}

const cache = new Map<string, QemuUser | undefined>();

/**
 * The user QEMU runs as for a store at `home` and `memDir`, or undefined for "as forkvm itself".
 * `FORKVM_QEMU_USER=root` (or the name of the user forkvm runs as) turns it off;
 * `FORKVM_QEMU_USER=<name>` asks for that account (HOST when it does not exist or cannot reach
 * the home or the memory directory). Unset: `forkvm-qemu` when forkvm runs as root, the account
 * exists and every directory above the home and the memory directory lets it search (a home under
 * a 0700 /root does not: then QEMU stays root). Cached per home, memory directory and setting.
 */
export function qemuUser(home: string, memDir: string, env = process.env): QemuUser | undefined {
  const asked = env.FORKVM_QEMU_USER?.trim() || undefined;
  const key = `${home}\0${memDir}\0${asked ?? ""}`;
  if (cache.has(key)) return cache.get(key);
  const decide = (): QemuUser | undefined => {
    if (asked === "root" || process.getuid?.() !== 0) return undefined;
    const user = lookup(asked ?? QEMU_USER);
    if (!user || user.uid === 0) {
      if (asked) throw new ForkvmError("HOST", `Cannot run QEMU as ${asked}: ${user ? "it is root" : "no such user in /etc/passwd"}; create it (scripts/setup.sh makes ${QEMU_USER}) or set FORKVM_QEMU_USER=root`, { details: { user: asked } });
      return undefined;
    }
    const blocked = [...ancestors(home), ...ancestors(memDir)].find((d) => !searchable(d, user));
    if (blocked) {
      if (asked) throw new ForkvmError("HOST", `Cannot run QEMU as ${asked}: it cannot search ${blocked} (above ${home} or ${memDir}); chmod o+x ${blocked}, move FORKVM_HOME, or set FORKVM_QEMU_USER=root`, { details: { user: asked, dir: blocked } });
      return undefined;
    }
    return user;
  };
  const user = decide();
  cache.set(key, user);
  return user;
}

/**
 * Gives QEMU's user what it needs on `file`: `dir` search (0710), `rw` read-write (0660: a disk
 * QEMU reopens, a socket it connects to), both with the user's group; nothing when QEMU runs as
 * forkvm itself. `file` is one forkvm just created (chown does not follow a link; chmod would).
 */
export function grantQemu(user: QemuUser | undefined, file: string, access: "dir" | "rw"): void {
  if (!user) return;
  fs.lchownSync(file, -1, user.gid);
  fs.chmodSync(file, access === "dir" ? 0o710 : 0o660);
}
