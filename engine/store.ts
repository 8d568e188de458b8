// The state directory: one directory per object holding one versioned manifest written
// atomically (temp → fsync → rename → fsync dir), plus a tmpfs directory for memory images.
// Names are reserved by mkdir (atomic); mutations of one object take its lock.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { createHash } from "node:crypto";
import * as lockfile from "proper-lockfile";
import { z } from "zod";
import { ForkvmError, messageOf } from "./errors";
import { Name, TemplateManifest, VmManifest } from "./manifest";

export type Kind = "vms" | "templates";

/** `$FORKVM_HOME`, else `$XDG_STATE_HOME/forkvm`, else `~/.local/state/forkvm`. */
export function defaultHome(env = process.env): string {
  if (env.FORKVM_HOME) return path.resolve(env.FORKVM_HOME);
  const xdg = env.XDG_STATE_HOME || path.join(os.homedir(), ".local", "state");
  return path.join(xdg, "forkvm");
}

/** `$FORKVM_MEMDIR`, else a directory on /dev/shm named after the home (so homes never collide). */
export function defaultMemDir(home: string, env = process.env): string {
  if (env.FORKVM_MEMDIR) return path.resolve(env.FORKVM_MEMDIR);
  const tag = createHash("sha256").update(home).digest("hex").slice(0, 10);
  return path.join("/dev/shm", `forkvm-${tag}`);
}

/** Writes `data` to `file` durably and atomically. */
export function writeFileAtomic(file: string, data: string | Buffer): void {
  const tmp = `${file}.tmp-${process.pid}-${Math.random().toString(36).slice(2)}`;
  const fd = fs.openSync(tmp, "w", 0o644);
  try {
    fs.writeSync(fd, typeof data === "string" ? Buffer.from(data) : data);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
  const dfd = fs.openSync(path.dirname(file), "r");
  try { fs.fsyncSync(dfd); } finally { fs.closeSync(dfd); }
}

export class Store {
  constructor(readonly home: string = defaultHome(), readonly memDir: string = defaultMemDir(home)) {}

  dir(kind: Kind, name: string): string {
    return path.join(this.home, kind, name);
  }

  memoryPath(kind: Kind, name: string): string {
    return path.join(this.memDir, `${kind}-${name}.mem`);
  }

  /** Creates the directories the store needs. */
  init(): void {
    for (const d of [path.join(this.home, "vms"), path.join(this.home, "templates"), this.memDir]) fs.mkdirSync(d, { recursive: true, mode: 0o700 });
  }

  /** Reserves a name by creating its directory. Throws ALREADY_EXISTS or INVALID_ARGUMENT. */
  reserve(kind: Kind, name: string): string {
    const ok = Name.safeParse(name);
    if (!ok.success) throw new ForkvmError("INVALID_ARGUMENT", `Cannot use name "${name}": ${ok.error.issues[0]?.message}`, { details: { field: "name" } });
    this.init();
    const dir = this.dir(kind, name);
    // Unix sockets have a 108-byte path limit; the longest we create is <dir>/console.sock.
    if (Buffer.byteLength(path.join(dir, "console.sock")) > 107) {
      throw new ForkvmError("INVALID_ARGUMENT", `Cannot use name "${name}": state path ${dir} is too long for unix sockets; set FORKVM_HOME to a shorter path`, { details: { field: "name" } });
    }
    const taken = (by: Kind) =>
      new ForkvmError("ALREADY_EXISTS", `Cannot create ${kind === "vms" ? "VM" : "template"} ${name}: the name is taken by a ${by === "vms" ? "VM" : "template"}`, { details: { field: "name" } });
    // VMs and templates share one namespace, so a name always means one object (rm, inspect).
    const other: Kind = kind === "vms" ? "templates" : "vms";
    if (this.exists(other, name)) throw taken(other);
    try {
      fs.mkdirSync(dir, { mode: 0o700 });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "EEXIST") throw taken(kind);
      throw err;
    }
    // A concurrent reservation of the same name in the other kind: both back off, neither wins twice.
    if (this.exists(other, name)) {
      fs.rmdirSync(dir);
      throw taken(other);
    }
    return dir;
  }

  /** Is a name free in both namespaces' sense for `kind`? */
  exists(kind: Kind, name: string): boolean {
    return fs.existsSync(this.dir(kind, name));
  }

  writeVm(m: VmManifest): void {
    writeFileAtomic(path.join(this.dir("vms", m.name), "manifest.json"), JSON.stringify(VmManifest.parse(m), null, 2) + "\n");
  }

  writeTemplate(m: TemplateManifest): void {
    writeFileAtomic(path.join(this.dir("templates", m.name), "manifest.json"), JSON.stringify(TemplateManifest.parse(m), null, 2) + "\n");
  }

  private read<T>(kind: Kind, name: string, schema: z.ZodType<T>): T | undefined {
    const file = path.join(this.dir(kind, name), "manifest.json");
    let text: string;
    try {
      text = fs.readFileSync(file, "utf8");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw new ForkvmError("STATE", `Cannot read ${file}: ${messageOf(err)}`, { cause: err });
    }
    const parsed = schema.safeParse(JSON.parse(text));
    if (!parsed.success) throw new ForkvmError("STATE", `Cannot read ${file}: invalid manifest: ${parsed.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`).join("; ")}`);
    return parsed.data;
  }

  /** The VM's manifest, or undefined when there is none (yet). Throws STATE if it is corrupt. */
  findVm(name: string): VmManifest | undefined {
    return this.read("vms", name, VmManifest);
  }

  findTemplate(name: string): TemplateManifest | undefined {
    return this.read("templates", name, TemplateManifest);
  }

  /** Throws NOT_FOUND when there is no such VM. */
  getVm(name: string): VmManifest {
    const m = this.findVm(name);
    if (!m) throw new ForkvmError("NOT_FOUND", `Cannot find VM ${name}: no such VM in ${this.home}`, { details: { name } });
    return m;
  }

  getTemplate(name: string): TemplateManifest {
    const m = this.findTemplate(name);
    if (!m) throw new ForkvmError("NOT_FOUND", `Cannot find template ${name}: no such template in ${this.home}`, { details: { name } });
    return m;
  }

  /** Names of every directory of `kind`, with or without a valid manifest. */
  names(kind: Kind): string[] {
    try {
      return fs.readdirSync(path.join(this.home, kind)).filter((n) => !n.includes(".")).sort();
    } catch {
      return [];
    }
  }

  /** Every object of `kind` whose manifest validates (half-made and corrupt ones are left to gc). */
  private list<T>(kind: Kind, find: (name: string) => T | undefined): T[] {
    return this.names(kind).flatMap((n) => {
      try {
        const m = find(n);
        return m ? [m] : [];
      } catch {
        return [];
      }
    });
  }

  listVms(): VmManifest[] {
    return this.list("vms", (n) => this.findVm(n));
  }

  listTemplates(): TemplateManifest[] {
    return this.list("templates", (n) => this.findTemplate(n));
  }

  /** Removes an object's directory and its memory file; safe to repeat. */
  remove(kind: Kind, name: string): void {
    fs.rmSync(this.dir(kind, name), { recursive: true, force: true });
    fs.rmSync(this.memoryPath(kind, name), { force: true });
  }

  /**
   * Runs `fn` holding the lock of one object (another process waits up to `waitMs`).
   * Throws CONFLICT when the lock cannot be had in time.
   */
  async withLock<T>(kind: Kind, name: string, fn: () => Promise<T>, waitMs = 120_000): Promise<T> {
    this.init();
    const lockTarget = path.join(this.home, kind, `${name}.lock`);
    const until = Date.now() + waitMs;
    let release: (() => Promise<void>) | undefined;
    while (!release) {
      try {
        release = await lockfile.lock(lockTarget, { realpath: false, stale: 15_000, update: 5_000 });
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "ELOCKED" || Date.now() > until) {
          throw new ForkvmError("CONFLICT", `Cannot lock ${kind === "vms" ? "VM" : "template"} ${name}: ${messageOf(err)}`, { cause: err });
        }
        await new Promise((r) => setTimeout(r, 20 + Math.random() * 30));
      }
    }
    try {
      return await fn();
    } finally {
      await release().catch(() => undefined);
    }
  }
}
