// The newc ("070701") cpio writer of the initramfs, byte-identical across builds, and the
// entries of a staged directory tree with normalised metadata.
import * as fs from "node:fs";
import * as path from "node:path";
import { ForkvmError } from "../errors";

export type CpioEntry =
  | { path: string; type: "dir"; mode?: number }
  | { path: string; type: "file"; mode?: number; data: Buffer }
  | { path: string; type: "symlink"; target: string }
  | { path: string; type: "char"; mode?: number; major: number; minor: number };

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;

/**
 * A newc ("070701") cpio archive of `entries`, byte-identical for the same entries in any order:
 * sorted by path, owner root, mtime 0, inode numbers by position. Throws IMAGE on duplicates.
 */
export function cpioArchive(entries: CpioEntry[]): Buffer {
  const sorted = [...entries].map((e) => ({ ...e, path: e.path.replace(/^\/+/, "").replace(/\/+$/, "") }));
  sorted.sort((a, b) => Buffer.compare(Buffer.from(a.path), Buffer.from(b.path)));
  const parts: Buffer[] = [];
  const pad = (n: number) => Buffer.alloc((4 - (n % 4)) % 4);
  const header = (f: { ino: number; mode: number; nlink: number; size: number; rmaj: number; rmin: number; name: string }) => {
    const name = Buffer.from(`${f.name}\0`);
    const fields = [f.ino, f.mode, 0, 0, f.nlink, 0, f.size, 0, 0, f.rmaj, f.rmin, name.length, 0];
    const h = Buffer.from("070701" + fields.map((v) => v.toString(16).padStart(8, "0")).join(""), "ascii");
    parts.push(h, name, pad(h.length + name.length));
  };
  let ino = 1;
  let prev = "";
  for (const e of sorted) {
    if (!e.path) throw new ForkvmError("IMAGE", "Cannot write cpio archive: an entry has an empty path");
    if (e.path === prev) throw new ForkvmError("IMAGE", `Cannot write cpio archive: ${e.path} appears twice`);
    prev = e.path;
    let data: Buffer = Buffer.alloc(0);
    let mode: number;
    let rmaj = 0;
    let rmin = 0;
    switch (e.type) {
      case "dir":
        mode = S_IFDIR | (e.mode ?? 0o755);
        break;
      case "file":
        mode = S_IFREG | (e.mode ?? 0o644);
        data = e.data;
        break;
      case "symlink":
        mode = S_IFLNK | 0o777;
        data = Buffer.from(e.target);
        break;
      case "char":
        mode = S_IFCHR | (e.mode ?? 0o600);
        rmaj = e.major;
        rmin = e.minor;
        break;
    }
    header({ ino: ino++, mode, nlink: e.type === "dir" ? 2 : 1, size: data.length, rmaj, rmin, name: e.path });
    parts.push(data, pad(data.length));
  }
  header({ ino: 0, mode: 0, nlink: 1, size: 0, rmaj: 0, rmin: 0, name: "TRAILER!!!" });
  return Buffer.concat(parts);
}

/**
 * The entries of the tree under `root` with normalised metadata: directories 0755, files 0755
 * when any execute bit is set else 0644, symlinks as they are. Throws IMAGE on other file types.
 */
export async function treeEntries(root: string): Promise<CpioEntry[]> {
  const out: CpioEntry[] = [];
  const walk = async (rel: string) => {
    const names = (await fs.promises.readdir(path.join(root, rel))).sort();
    for (const n of names) {
      const r = rel ? `${rel}/${n}` : n;
      const full = path.join(root, r);
      const st = await fs.promises.lstat(full);
      if (st.isDirectory()) {
        out.push({ path: r, type: "dir", mode: 0o755 });
        await walk(r);
      } else if (st.isFile()) {
        out.push({ path: r, type: "file", mode: st.mode & 0o111 ? 0o755 : 0o644, data: await fs.promises.readFile(full) });
      } else if (st.isSymbolicLink()) {
        out.push({ path: r, type: "symlink", target: await fs.promises.readlink(full) });
      } else {
        throw new ForkvmError("IMAGE", `Cannot archive ${full}: not a file, directory or symlink`);
      }
    }
  };
  await walk("");
  return out;
}
