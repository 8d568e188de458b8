// The state directory: one directory per object holding one versioned manifest written
// atomically (temp → fsync → rename → fsync dir), plus a tmpfs directory for memory images.
// Names are reserved by mkdir (atomic) in one namespace shared by VMs, templates and pools, and a
// reservation names the process that made it; mutations of one object take its lock, and a lock
// names its holder, so a holder that died is known at once. The memory directory is private.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { createHash, randomBytes } from "node:crypto";
import * as lockfile from "proper-lockfile";
import { z } from "zod";
import { ForkvmError, messageOf } from "../errors";
import { checkName, NAME_RE } from "../spec";
import { writeFileAtomic } from "../util/atomic-write";
import { isLive, selfRef, type ProcessRef } from "../qemu/find";
import { grantQemu, qemuAccountGid, qemuUser, type QemuUser } from "../qemu/run-as";
import { MANIFEST_VERSION, PoolManifest, ProcessRecord, TemplateManifest, VmManifest } from "./manifest";

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

  /** An object's file in the memory directory: `<kind>-<name>.<ext>`, `ext` one of MEM_FILES[kind]. */
  memFile(kind: Kind, name: string, ext: MemFileExt): string {
    if (!(MEM_FILES[kind] as readonly string[]).includes(ext)) throw new Error(`${kind} own no .${ext} memory-directory file`);
    return path.join(this.memDir, `${kind}-${checkName(name)}.${ext}`);
  }

  /** The memory image of a VM (its own, shared) or of a template (read-only). */
  memoryPath(kind: Kind, name: string): string {
    return this.memFile(kind, name, "mem");
  }

  /** Every memory-directory file an object of this name may own (what remove and gc may delete; nothing else there is theirs). */
  memFilesOf(kind: Kind, name: string): string[] {
    return MEM_FILES[kind].map((ext) => this.memFile(kind, name, ext));
  }

  /**
   * Creates an empty file of `bytes` in the memory directory for QEMU to map, never through a link:
   * whatever is at the path (a planted symlink included) is unlinked, then the file is made with
   * O_EXCL|O_NOFOLLOW, 0600. (QEMU's memory-backend-file follows a symlink at mem-path, and grows
   * and maps its target.) Throws HOST.
   */
  createMemFile(file: string, bytes: number): void {
    this.init();
    if (path.dirname(file) !== this.memDir || !memFileOwner(path.basename(file))) throw new Error(`${file} is not a forkvm file of ${this.memDir}`);
    try {
      fs.rmSync(file, { force: true });
      const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW, 0o600);
      try { fs.ftruncateSync(fd, bytes); } finally { fs.closeSync(fd); }
    } catch (err) {
      throw new ForkvmError("HOST", `Cannot create memory file ${file}: ${messageOf(err)}`, { cause: err, details: { file } });
    }
  }

  /** Creates the directories the store needs; the memory directory must be private (see privateMemDir). Throws HOST. */
  init(): void {
    for (const d of KINDS.map((k) => path.join(this.home, k))) fs.mkdirSync(d, { recursive: true, mode: 0o700 });
    if (!this.memDirChecked) {
      const user = this.qemuUser();
      // QEMU's user searches the home, vms/ and templates/ to reach the files it reopens (never pools/).
      for (const d of [this.home, path.join(this.home, "vms"), path.join(this.home, "templates")]) grantQemu(user, d, "dir");
      privateMemDir(this.memDir, user?.gid);
      this.memDirChecked = true;
    }
  }

  /** The user QEMU runs as for this store (qemu/run-as.ts), undefined for forkvm's own. Throws HOST (FORKVM_QEMU_USER unusable). */
  qemuUser(): QemuUser | undefined {
    return qemuUser(this.home, this.memDir);
  }

  private memDirChecked = false;

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
    if (!this.makeReservation(kind, name)) throw taken(kind);
    // A concurrent reservation of the same name in another kind: both back off, neither wins twice.
    const raced = others.find((k) => this.exists(k, name));
    if (raced) {
      fs.rmSync(dir, { recursive: true, force: true });
      throw taken(raced);
    }
    return dir;
  }

  /** mkdir of the object's directory (false when it exists), then the record of who reserved it. */
  private makeReservation(kind: Kind, name: string): boolean {
    const dir = this.dir(kind, name);
    try {
      fs.mkdirSync(dir, { mode: 0o700 });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "EEXIST") return false;
      throw err;
    }
    if (kind !== "pools") grantQemu(this.qemuUser(), dir, "dir"); // QEMU reaches its sockets and disks there
    writeRecord(path.join(dir, RESERVATION_FILE), { by: selfRef(), at: new Date().toISOString() });
    return true;
  }

  /**
   * Who reserved an object's directory and how long ago (its mtime), or undefined when there is
   * no directory. `by` is undefined for a directory reserved by a forkvm before this record existed
   * (or in the instant between mkdir and the record).
   */
  reservation(kind: Kind, name: string): { by?: ProcessRef; ageMs: number } | undefined {
    const dir = this.dir(kind, name);
    let ageMs: number;
    try { ageMs = Date.now() - fs.statSync(dir).mtimeMs; } catch { return undefined; }
    try {
      const r = z.object({ by: ProcessRecord }).safeParse(JSON.parse(fs.readFileSync(path.join(dir, RESERVATION_FILE), "utf8")));
      return { by: r.success ? r.data.by : undefined, ageMs };
    } catch {
      return { ageMs };
    }
  }

  /**
   * Holds a name no object has, for gc to delete files an earlier object of that name left, while
   * no create can take the name (a create racing it fails with ALREADY_EXISTS, as with any
   * reservation). Returns the release, or undefined when the name is held.
   */
  claimName(kind: Kind, name: string): (() => void) | undefined {
    this.init();
    if (!this.makeReservation(kind, name)) return undefined;
    return () => fs.rmSync(this.dir(kind, name), { recursive: true, force: true });
  }

  /** Whether `kind` has an object (or a half-made one) of this name. */
  exists(kind: Kind, name: string): boolean {
    return fs.existsSync(this.dir(kind, name));
  }

  /** Manifests are 0600: a parent's may hold init commands given as secrets. */
  private write(kind: Kind, name: string, json: unknown): void {
    writeFileAtomic(path.join(this.dir(kind, name), "manifest.json"), JSON.stringify(json, null, 2) + "\n", 0o600);
  }

  /**
   * Writes a VM's manifest. A manifest in a transitional state (`creating`, `starting`) records the
   * process writing it as the operation's owner (`op`, kept when already set); any other state ends
   * a create or start (`op` dropped), while a capture's `op` stays until its writer clears it.
   */
  writeVm(m: VmManifest): void {
    this.write("vms", m.name, VmManifest.parse({ ...m, op: opFor(m) }));
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
      throw new ForkvmError("STATE", `Cannot read ${file}: not JSON (${messageOf(err)}); the file is damaged`, { cause: err, details: { file, problem: "damaged" } });
    }
    const version = (json as { version?: unknown } | null)?.version;
    if (typeof version === "number" && Number.isInteger(version) && version > MANIFEST_VERSION) {
      throw new ForkvmError("STATE", `Cannot read ${file}: it was written by a newer forkvm (manifest version ${version}; this forkvm reads version ${MANIFEST_VERSION}); use that forkvm, gc leaves it alone`, {
        details: { file, problem: "unknown-version", version },
      });
    }
    const parsed = schema.safeParse(json);
    if (!parsed.success) throw new ForkvmError("STATE", `Cannot read ${file}: invalid manifest: ${parsed.error.issues.slice(0, 5).map((i) => `${i.path.join(".")}: ${i.message}`).join("; ")}`, { details: { file, problem: "damaged" } });
    const stray = this.strayPaths(kind, name, parsed.data as Record<string, unknown>);
    if (stray.length) {
      // A manifest is only trusted with paths where the store itself puts files: forkvm deletes and
      // renames what a manifest names, so one that names a path elsewhere is damaged, never obeyed.
      throw new ForkvmError("STATE", `Cannot read ${file}: it names ${stray.map((x) => `${x.field} ${JSON.stringify(x.path)}`).join(", ")} outside ${this.home}'s objects and ${this.memDir}; the file is damaged`, { details: { file, problem: "damaged", stray } });
    }
    return parsed.data;
  }

  /**
   * The files a manifest names that forkvm may delete or move, where they are not the store's own:
   * anything outside the home's object directories and the memory directory. (A consumed parent's
   * disk lives in its template's directory, a child maps its template's image: paths cross objects
   * inside the home, never leave it.)
   */
  private strayPaths(_kind: Kind, _name: string, m: Record<string, unknown>): Array<{ field: string; path: string }> {
    const inside = (p: string, root: string) => { const rel = path.relative(root, path.resolve(p)); return rel !== "" && !rel.startsWith("..") && !path.isAbsolute(rel); };
    const ok = (p: string) => KINDS.some((k) => inside(p, path.join(this.home, k))) || inside(p, this.memDir);
    const out: Array<{ field: string; path: string }> = [];
    for (const field of ["memoryPath", "diskPath", "statePath"]) {
      const p = m[field];
      if (typeof p === "string" && !ok(p)) out.push({ field, path: p });
    }
    const op = m.op as { moved?: Array<{ from: string; to: string }> } | undefined;
    for (const [i, mv] of (op?.moved ?? []).entries()) {
      for (const end of ["from", "to"] as const) if (!ok(mv[end])) out.push({ field: `op.moved[${i}].${end}`, path: mv[end] });
    }
    return out;
  }

  /**
   * What is under an object's name, without throwing for what is half-made or unreadable: a valid
   * manifest (`ok`), nothing, a directory without a manifest (`reserved`: a create in flight or
   * interrupted), a manifest that does not validate (`damaged`) or one of a newer forkvm
   * (`unknown-version`). Throws INVALID_ARGUMENT for a bad name only.
   */
  probe(kind: Kind, name: string): ObjectHealth {
    const find = kind === "vms" ? () => this.findVm(name) : kind === "templates" ? () => this.findTemplate(name) : () => this.findPool(name);
    try {
      const manifest = find();
      if (manifest) return { kind, name, health: "ok", manifest };
      const r = this.reservation(kind, name);
      return r ? { kind, name, health: "reserved", by: r.by, ageMs: r.ageMs } : { kind, name, health: "absent" };
    } catch (err) {
      const d = err instanceof ForkvmError ? err.details : {};
      if (d.problem === "unknown-version") return { kind, name, health: "unknown-version", version: d.version as number, message: messageOf(err) };
      return { kind, name, health: "damaged", message: messageOf(err) };
    }
  }

  /** Every object directory that holds no valid manifest (see probe), for `ls` and `gc` to report. */
  problems(): ObjectHealth[] {
    return KINDS.flatMap((k) => this.names(k).map((n) => this.probe(k, n)).filter((p) => p.health !== "ok" && p.health !== "absent"));
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

  /**
   * Removes an object: its directory goes at once (renamed aside, so no half-deleted object is ever
   * seen), then every memory-directory file of its name (memFilesOf), then the renamed directory.
   * Safe to repeat; what a crash leaves is `.trash-*`, which gc removes.
   */
  remove(kind: Kind, name: string): void {
    const dir = this.dir(kind, name);
    const trash = path.join(this.home, kind, `${TRASH_PREFIX}${name}-${randomBytes(4).toString("hex")}`);
    let moved = true;
    try {
      fs.renameSync(dir, trash);
    } catch (err) {
      moved = false;
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") fs.rmSync(dir, { recursive: true, force: true });
    }
    for (const f of this.memFilesOf(kind, name)) fs.rmSync(f, { force: true });
    if (moved) fs.rmSync(trash, { recursive: true, force: true });
  }

  /** Leftovers of removals that crashed midway (`<kind>/.trash-*`): nothing refers to them. */
  trash(): string[] {
    return KINDS.flatMap((k) => {
      try {
        return fs.readdirSync(path.join(this.home, k)).filter((f) => f.startsWith(TRASH_PREFIX)).map((f) => path.join(this.home, k, f));
      } catch {
        return [];
      }
    });
  }

  /** The lock directory of an object (proper-lockfile's mkdir lock): what `withLock` holds and `isLocked` checks. */
  lockPath(kind: Kind, name: string): string {
    return path.join(this.home, kind, `${checkName(name)}.lock`);
  }

  /** Where a lock's holder is recorded while it holds it: `<kind>/<name>.lock.owner` (inside the lock directory it would stop proper-lockfile's rmdir). */
  private holderPath(kind: Kind, name: string): string {
    return `${this.lockPath(kind, name)}.owner`;
  }

  /** The recorded holder of an object's lock, if any. */
  lockHolder(kind: Kind, name: string): ProcessRef | undefined {
    return readHolder(this.holderPath(kind, name))?.by;
  }

  /** Whether a live holder has the object's lock (a stale lock, or one whose recorded holder died, is not). */
  isLocked(kind: Kind, name: string): boolean {
    try {
      if (!lockfile.checkSync(this.lockPath(kind, name), { realpath: false, lockfilePath: this.lockPath(kind, name), stale: LOCK_STALE_MS })) return false;
    } catch {
      return false;
    }
    const holder = readHolder(this.holderPath(kind, name));
    return !holder || holder.ino !== inodeOf(this.lockPath(kind, name)) || isLive(holder.by);
  }

  /**
   * Frees a lock whose recorded holder is dead (SIGKILL, host crash), so nobody waits out the
   * stale limit. Of several processes reaping at once, exactly one wins: the one whose rename took
   * the dead holder's record (a record found to be a live holder's is put back). Returns whether
   * the lock was freed.
   */
  private reapDeadHolder(kind: Kind, name: string): boolean {
    const file = this.holderPath(kind, name);
    const seen = readHolder(file);
    if (!seen || isLive(seen.by)) return false;
    const grabbed = `${file}.reap-${randomBytes(4).toString("hex")}`;
    try {
      fs.renameSync(file, grabbed);
    } catch {
      return false;
    }
    const got = readHolder(grabbed);
    if (got?.id !== seen.id) {
      try { fs.linkSync(grabbed, file); } catch { /* a newer holder recorded itself meanwhile */ }
      fs.rmSync(grabbed, { force: true });
      return false;
    }
    // Only the lock that holder took: one re-made since (a stale takeover) is not the dead holder's.
    const lock = this.lockPath(kind, name);
    const mine = inodeOf(lock) === seen.ino;
    if (mine) { try { fs.rmdirSync(lock); } catch { /* already gone */ } }
    fs.rmSync(grabbed, { force: true });
    return mine;
  }

  /**
   * Removes what locks of dead holders left (for gc): a lock whose recorded holder died, a holder
   * record without its lock, and a lock without a record past the stale limit. Live holders' locks
   * are never touched. Returns the paths removed.
   */
  sweepLocks(): string[] {
    const out: string[] = [];
    for (const k of KINDS) {
      let entries: string[] = [];
      try { entries = fs.readdirSync(path.join(this.home, k)); } catch { continue; }
      for (const f of entries) {
        const file = path.join(this.home, k, f);
        const tmp = /\.lock\.owner\.tmp-(\d+)-[0-9a-f]+$/.exec(f);
        if (tmp) {
          // A record half-written by a process that is gone.
          if (!fs.existsSync(`/proc/${tmp[1]}`)) { fs.rmSync(file, { force: true }); out.push(file); }
          continue;
        }
        const m = /^([a-z0-9][a-z0-9-]*)\.lock(\.owner(\.reap-[0-9a-f]+)?)?$/.exec(f);
        if (!m || !NAME_RE.test(m[1])) continue;
        const lock = this.lockPath(k, m[1]);
        if (!m[2]) {
          // The lock itself: a dead holder's goes with its record; one without a record once stale.
          if (this.reapDeadHolder(k, m[1])) out.push(lock);
          else if (!readHolder(this.holderPath(k, m[1])) && fs.existsSync(lock) && !this.isLocked(k, m[1])) {
            try { fs.rmdirSync(lock); out.push(lock); } catch { /* taken meanwhile */ }
          }
        } else if (!fs.existsSync(file)) {
          continue; // reaped above
        } else {
          const holder = readHolder(file);
          if (holder && isLive(holder.by)) continue;
          if (m[3] || !fs.existsSync(lock)) { fs.rmSync(file, { force: true }); out.push(file); }
        }
      }
    }
    return out;
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
        if ((err as NodeJS.ErrnoException).code === "ELOCKED" && this.reapDeadHolder(kind, name)) continue;
        if ((err as NodeJS.ErrnoException).code !== "ELOCKED" || Date.now() > until) {
          const holder = this.lockHolder(kind, name);
          const by = holder ? ` (held by pid ${holder.pid})` : "";
          throw new ForkvmError("CONFLICT", `Cannot lock ${NOUN[kind]} ${name}: ${messageOf(err)}${by}`, { cause: err, details: { lock: file, holder: holder?.pid } });
        }
        await new Promise((r) => setTimeout(r, 20 + Math.random() * 30));
      }
    }
    // Who holds it, so a waiter can tell a dead holder at once (reapDeadHolder).
    const id = randomBytes(6).toString("hex");
    const holderFile = this.holderPath(kind, name);
    try {
      writeRecord(holderFile, { by: selfRef(), id, ino: inodeOf(file) });
    } catch { /* without the record, a crash of this holder is seen when the lock goes stale */ }
    try {
      return await fn();
    } finally {
      if (readHolder(holderFile)?.id === id) fs.rmSync(holderFile, { force: true });
      await release().catch(() => undefined);
    }
  }
}

/** Files an object of each kind may own in the memory directory, by extension: the one list of them. */
export const MEM_FILES = {
  /** .mem: a parent's (or full clone's) own memory; .qcow2: a non-persistent child's delta disk. */
  vms: ["mem", "qcow2"],
  /** .mem: the template's memory image; .stream: a running-mode capture's migration stream. */
  templates: ["mem", "stream"],
  pools: [],
} as const satisfies Record<Kind, readonly string[]>;
export type MemFileExt = (typeof MEM_FILES)[Kind][number];

/** The object a memory-directory file name belongs to, or undefined when forkvm does not own that name. */
export function memFileOwner(file: string): { kind: Kind; name: string } | undefined {
  const m = /^(vms|templates|pools)-(.+)\.([a-z0-9]+)$/.exec(file);
  if (!m || !NAME_RE.test(m[2])) return undefined;
  const kind = m[1] as Kind;
  return (MEM_FILES[kind] as readonly string[]).includes(m[3]) ? { kind, name: m[2] } : undefined;
}

/** What probe finds under a name. */
export type ObjectHealth = { kind: Kind; name: string } & (
  | { health: "ok"; manifest: VmManifest | TemplateManifest | PoolManifest }
  | { health: "absent" }
  | { health: "reserved"; by?: ProcessRef; ageMs: number }
  | { health: "damaged"; message: string }
  | { health: "unknown-version"; version: number; message: string }
);

/** The record a reservation leaves in the object's directory. */
const RESERVATION_FILE = "reserved-by.json";
const TRASH_PREFIX = ".trash-";

/**
 * Writes a small record whole (temp file, rename) but not durably: records name live processes,
 * which a host crash ends anyway (a new boot id), so they need no fsync (a lock is taken per operation).
 */
function writeRecord(file: string, json: unknown): void {
  const tmp = `${file}.tmp-${process.pid}-${randomBytes(4).toString("hex")}`;
  fs.writeFileSync(tmp, JSON.stringify(json) + "\n", { mode: 0o600, flag: "wx" });
  try {
    fs.renameSync(tmp, file);
  } catch (err) {
    fs.rmSync(tmp, { force: true });
    throw err;
  }
}

function inodeOf(file: string): number | undefined {
  try {
    return fs.statSync(file).ino;
  } catch {
    return undefined;
  }
}

/** A lock's holder record: who, a per-acquisition id, and the inode of the lock directory it took. */
function readHolder(file: string): { by: ProcessRef; id: string; ino?: number } | undefined {
  try {
    const r = z.object({ by: ProcessRecord, id: z.string(), ino: z.number().optional() }).safeParse(JSON.parse(fs.readFileSync(file, "utf8")));
    return r.success ? r.data : undefined;
  } catch {
    return undefined;
  }
}

/** The `op` a VM manifest is written with (see Store.writeVm). */
function opFor(m: VmManifest): VmManifest["op"] {
  const what = m.state === "creating" ? "create" : m.state === "starting" ? "start" : undefined;
  if (what) return m.op?.what === what ? m.op : { what, by: selfRef(), since: new Date().toISOString() };
  return m.op?.what === "capture" ? m.op : undefined;
}

/**
 * Makes the memory directory (0700, parents too) or checks an existing one: a real directory (not
 * a link) owned by this user with no access for anyone else: guest RAM lives there, and a file
 * another user planted could be a link forkvm's QEMU would follow. With `qemuGid` (QEMU runs as
 * its own user) a 0700 directory becomes 0710 with that group; 0710/0750 with it, or with the
 * forkvm-qemu account's group, are accepted.
 * Throws HOST naming the directory and what to do.
 */
export function privateMemDir(dir: string, qemuGid?: number): void {
  try {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw new ForkvmError("HOST", `Cannot create memory directory ${dir}: ${messageOf(err)}`, { cause: err, details: { memDir: dir } });
  }
  let st = fs.lstatSync(dir);
  // QEMU running as its own user (qemu/run-as.ts) reopens a child's delta disk here: the directory
  // may grant that user's group search (0710) or search and listing (0750), nothing more, no one else.
  if (qemuGid !== undefined && st.isDirectory() && st.uid === process.getuid?.() && (st.mode & 0o7777) === 0o700) {
    fs.lchownSync(dir, -1, qemuGid);
    fs.chmodSync(dir, 0o710);
    st = fs.lstatSync(dir);
  }
  // The group may be the one given or the forkvm-qemu account's (so gc and FORKVM_QEMU_USER=root accept what a QEMU-user run made).
  const qemuGroups = [qemuGid, qemuAccountGid()].filter((g) => g !== undefined);
  const groupOnly = qemuGroups.includes(st.gid) && ((st.mode & 0o077) === 0o010 || (st.mode & 0o077) === 0o050);
  const uid = process.getuid?.();
  const refuse = (why: string, fix: string) =>
    new ForkvmError("HOST", `Cannot use memory directory ${dir}: ${why}; ${fix}`, { details: { memDir: dir, mode: st.mode & 0o7777, uid: st.uid } });
  const elsewhere = "or set FORKVM_MEMDIR to a directory of your own with mode 0700";
  if (st.isSymbolicLink() || !st.isDirectory()) throw refuse(st.isSymbolicLink() ? "it is a symbolic link" : "it is not a directory", `remove it, ${elsewhere}`);
  if (uid !== undefined && st.uid !== uid) throw refuse(`it belongs to uid ${st.uid}, not to you (uid ${uid}): another user may read or replace guest memory there`, `find out who made it and remove it, ${elsewhere}`);
  const mode = (st.mode & 0o7777).toString(8).padStart(4, "0");
  if (st.mode & 0o022) throw refuse(`its mode is ${mode}: other users can create files there (forkvm would follow a link planted there) and their files are not forkvm's`, `set FORKVM_MEMDIR to a directory of your own in it (e.g. FORKVM_MEMDIR=${path.join(dir, `forkvm-${process.env.USER || uid}`)}: forkvm creates it 0700)`);
  if (st.mode & 0o077 && !groupOnly) throw refuse(`its mode is ${mode}: other users may read guest memory there`, `if nothing in it is anyone else's, chmod 700 ${dir}, ${elsewhere}`);
}
