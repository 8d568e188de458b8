// The state directory: one directory per object holding one versioned manifest written
// atomically (temp → fsync → rename → fsync dir), plus a tmpfs directory for memory images.
// Names are reserved by mkdir (atomic) in one namespace shared by VMs, templates and pools;
// mutations of one object take its lock.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { createHash } from "node:crypto";
import * as lockfile from "proper-lockfile";
import { z } from "zod";
import { ForkvmError, messageOf } from "../errors";
import { checkName, NAME_RE } from "../spec";
import { writeFileAtomic } from "../util/atomic-write";
import { PoolManifest, TemplateManifest, VmManifest } from "./manifest";

export type Kind = "vms" | "templates" | "pools";
export const KINDS: readonly Kind[] = ["vms", "templates", "pools"];
const NOUN: Record<Kind, string> = { vms: "VM", templates: "template", pools: "pool" };

/** "VM", "template" or "pool". */
export function nounOf(kind: Kind): string {
  return NOUN[kind];
}

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

/** A lock not refreshed for this long belongs to a holder that died. */
const LOCK_STALE_MS = 15_000;

export class Store {
  constructor(readonly home: string = defaultHome(), readonly memDir: string = defaultMemDir(home)) {}

  /** An object's directory. Throws INVALID_ARGUMENT for anything that is not a name (a path never escapes). */
  dir(kind: Kind, name: string): string {
    return path.join(this.home, kind, checkName(name));
  }

  memoryPath(kind: Kind, name: string): string {
    return path.join(this.memDir, `${kind}-${checkName(name)}.mem`);
  }

  /** Creates the directories the store needs. */
  init(): void {
    for (const d of [...KINDS.map((k) => path.join(this.home, k)), this.memDir]) fs.mkdirSync(d, { recursive: true, mode: 0o700 });
  }

  /** The kind of object holding `name`, if any (VMs, templates and pools share one namespace). */
  kindOf(name: string): Kind | undefined {
    return KINDS.find((k) => this.exists(k, name));
  }

  /** Reserves a name by creating its directory. Throws ALREADY_EXISTS or INVALID_ARGUMENT. */
  reserve(kind: Kind, name: string): string {
    checkName(name);
    this.init();
    const dir = this.dir(kind, name);
    // Unix sockets have a 108-byte path limit; the longest we create is <dir>/console.sock.
    if (Buffer.byteLength(path.join(dir, "console.sock")) > 107) {
      throw new ForkvmError("INVALID_ARGUMENT", `Cannot use name "${name}": state path ${dir} is too long for unix sockets; set FORKVM_HOME to a shorter path`, { details: { field: "name" } });
    }
    const taken = (by: Kind) =>
      new ForkvmError("ALREADY_EXISTS", `Cannot create ${NOUN[kind]} ${name}: the name is taken by a ${NOUN[by]}`, { details: { field: "name", kind: by } });
    // One namespace, so a name always means one object (rm, inspect).
    const others = KINDS.filter((k) => k !== kind);
    const other = others.find((k) => this.exists(k, name));
    if (other) throw taken(other);
    try {
      fs.mkdirSync(dir, { mode: 0o700 });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "EEXIST") throw taken(kind);
      throw err;
    }
    // A concurrent reservation of the same name in another kind: both back off, neither wins twice.
    const raced = others.find((k) => this.exists(k, name));
    if (raced) {
      fs.rmdirSync(dir);
      throw taken(raced);
    }
    return dir;
  }

  /** Whether `kind` has an object (or a half-made one) of this name. */
  exists(kind: Kind, name: string): boolean {
    return fs.existsSync(this.dir(kind, name));
  }

  /** Manifests are 0600: a parent's may hold init commands given as secrets. */
  private write(kind: Kind, name: string, json: unknown): void {
    writeFileAtomic(path.join(this.dir(kind, name), "manifest.json"), JSON.stringify(json, null, 2) + "\n", 0o600);
  }

  writeVm(m: VmManifest): void {
    this.write("vms", m.name, VmManifest.parse(m));
  }

  writeTemplate(m: TemplateManifest): void {
    this.write("templates", m.name, TemplateManifest.parse(m));
  }

  writePool(m: PoolManifest): void {
    this.write("pools", m.name, PoolManifest.parse(m));
  }

  /** The manifest's path of an object. */
  manifestPath(kind: Kind, name: string): string {
    return path.join(this.dir(kind, name), "manifest.json");
  }

  /** The manifest, or undefined when there is none (yet). Throws STATE naming the file when it is unreadable or invalid. */
  private read<T>(kind: Kind, name: string, schema: z.ZodType<T>): T | undefined {
    const file = this.manifestPath(kind, name);
    let text: string;
    try {
      text = fs.readFileSync(file, "utf8");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw new ForkvmError("STATE", `Cannot read ${file}: ${messageOf(err)}`, { cause: err, details: { file } });
    }
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch (err) {
      throw new ForkvmError("STATE", `Cannot read ${file}: not JSON (${messageOf(err)}); the file is damaged`, { cause: err, details: { file } });
    }
    const parsed = schema.safeParse(json);
    if (!parsed.success) throw new ForkvmError("STATE", `Cannot read ${file}: invalid manifest: ${parsed.error.issues.slice(0, 5).map((i) => `${i.path.join(".")}: ${i.message}`).join("; ")}`, { details: { file } });
    return parsed.data;
  }

  /** The VM's manifest, or undefined when there is none (yet). Throws STATE if it is corrupt. */
  findVm(name: string): VmManifest | undefined {
    return this.read("vms", name, VmManifest);
  }

  findTemplate(name: string): TemplateManifest | undefined {
    return this.read("templates", name, TemplateManifest);
  }

  findPool(name: string): PoolManifest | undefined {
    return this.read("pools", name, PoolManifest);
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

  getPool(name: string): PoolManifest {
    const m = this.findPool(name);
    if (!m) throw new ForkvmError("NOT_FOUND", `Cannot find pool ${name}: no such pool in ${this.home}`, { details: { name } });
    return m;
  }

  /** Names of every object directory of `kind`, with or without a valid manifest (never lock files). */
  names(kind: Kind): string[] {
    try {
      return fs.readdirSync(path.join(this.home, kind)).filter((n) => NAME_RE.test(n)).sort();
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

  listPools(): PoolManifest[] {
    return this.list("pools", (n) => this.findPool(n));
  }

  /** Removes an object's directory and its memory file; safe to repeat. */
  remove(kind: Kind, name: string): void {
    fs.rmSync(this.dir(kind, name), { recursive: true, force: true });
    fs.rmSync(this.memoryPath(kind, name), { force: true });
  }

  /** The lock directory of an object (proper-lockfile's mkdir lock): what `withLock` holds and `isLocked` checks. */
  lockPath(kind: Kind, name: string): string {
    return path.join(this.home, kind, `${checkName(name)}.lock`);
  }

  /** Whether a live holder has the object's lock (a stale lock of a crashed holder is not). */
  isLocked(kind: Kind, name: string): boolean {
    try {
      return lockfile.checkSync(this.lockPath(kind, name), { realpath: false, lockfilePath: this.lockPath(kind, name), stale: LOCK_STALE_MS });
    } catch {
      return false;
    }
  }

  /**
   * Runs `fn` holding the lock of one object (another process waits up to `waitMs`).
   * Throws CONFLICT when the lock cannot be had in time. A lock found compromised while held
   * (its directory removed or taken over, e.g. after the host stalled past the stale limit) is
   * logged through `onCompromised` instead of throwing from a timer.
   */
  async withLock<T>(kind: Kind, name: string, fn: () => Promise<T>, waitMs = 120_000, onCompromised?: (err: Error) => void): Promise<T> {
    this.init();
    const file = this.lockPath(kind, name);
    const until = Date.now() + waitMs;
    let release: (() => Promise<void>) | undefined;
    while (!release) {
      try {
        release = await lockfile.lock(file, {
          realpath: false, lockfilePath: file, stale: LOCK_STALE_MS, update: LOCK_STALE_MS / 3,
          onCompromised: (err) => onCompromised?.(err),
        });
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "ELOCKED" || Date.now() > until) {
          throw new ForkvmError("CONFLICT", `Cannot lock ${NOUN[kind]} ${name}: ${messageOf(err)}`, { cause: err, details: { lock: file } });
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
