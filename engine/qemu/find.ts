// Finding processes from what they left on record: a QEMU by the token in its command line (when
// its pid was never recorded) or by the VM directory it serves, and whether a recorded process
// (pid + start time + boot) is still the same live process.
import * as fs from "node:fs";
import * as path from "node:path";
import { isAlive } from "./process";
import { processName } from "./argv";

/** A process as recorded: its pid, its start time (clock ticks after boot) and the boot it ran in, so a reused pid never passes for it. */
export interface ProcessRef {
  pid: number;
  start: number;
  boot: string;
}

function read(file: string): string | undefined {
  try {
    return fs.readFileSync(file, "utf8");
  } catch {
    return undefined;
  }
}

let bootId: string | undefined;
/** This boot's id (empty where /proc does not say). */
export function currentBoot(): string {
  bootId ??= read("/proc/sys/kernel/random/boot_id")?.trim() ?? "";
  return bootId;
}

/** State letter and start time of a pid from /proc/<pid>/stat, or undefined when it is gone. */
function statOf(pid: number): { state: string; start: number } | undefined {
  const stat = read(`/proc/${pid}/stat`);
  if (!stat) return undefined;
  // The command name (field 2) may hold spaces and parentheses: fields are counted after the last ')'.
  const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return { state: rest[0], start: Number(rest[19]) };
}

/** The record of a live process, or undefined when it is gone. */
export function refOf(pid: number): ProcessRef | undefined {
  const s = statOf(pid);
  return s && s.state !== "Z" && s.state !== "X" ? { pid, start: s.start, boot: currentBoot() } : undefined;
}

let self: ProcessRef | undefined;
/** This process's record. */
export function selfRef(): ProcessRef {
  self ??= refOf(process.pid) ?? { pid: process.pid, start: 0, boot: currentBoot() };
  return self;
}

/** Whether the recorded process still runs: same boot, same pid, same start time, not a zombie. */
export function isLive(ref: ProcessRef | undefined): boolean {
  if (!ref) return false;
  if (ref.boot !== currentBoot()) return false;
  const s = statOf(ref.pid);
  return s !== undefined && s.start === ref.start && s.state !== "Z" && s.state !== "X";
}

/** A forkvm QEMU found in /proc: its pid, its token and the VM directory it serves (where its pidfile is). */
export interface QemuProcess {
  pid: number;
  token: string;
  dir?: string;
}

/** `-name forkvm-<token>,...` (argv.ts processName). */
const NAME_ARG = new RegExp(`^${processName("")}([0-9a-f]+)(,|$)`);

/** The forkvm QEMU of one pid (its argv carries `-name forkvm-<token>`), or undefined. */
function qemuOf(pid: number): QemuProcess | undefined {
  const cmdline = read(`/proc/${pid}/cmdline`);
  if (!cmdline) return undefined;
  const argv = cmdline.split("\0");
  const i = argv.indexOf("-name");
  const token = i >= 0 ? NAME_ARG.exec(argv[i + 1] ?? "")?.[1] : undefined;
  if (!token) return undefined;
  const p = argv.indexOf("-pidfile");
  const s = statOf(pid);
  if (!s || s.state === "Z" || s.state === "X") return undefined;
  return { pid, token, dir: p >= 0 && argv[p + 1] ? path.dirname(argv[p + 1]) : undefined };
}

/** Every live forkvm QEMU on the host (one pass over /proc). */
export function listQemus(): QemuProcess[] {
  let pids: string[] = [];
  try {
    pids = fs.readdirSync("/proc").filter((p) => /^\d+$/.test(p));
  } catch {
    return [];
  }
  return pids.flatMap((p) => qemuOf(Number(p)) ?? []);
}

/** The pid of the live QEMU carrying `token`, or undefined. */
export function findQemu(token: string, all: QemuProcess[] = listQemus()): number | undefined {
  return all.find((q) => q.token === token)?.pid;
}

/**
 * The pid of a VM's QEMU: the recorded pid when it is still that QEMU, else the process found by
 * the token (a QEMU recorded before it was spawned has a token and no pid yet), else undefined.
 */
export function livePid(pid: number | undefined, token: string, all?: QemuProcess[]): number | undefined {
  if (pid && isAlive(pid, token)) return pid;
  return findQemu(token, all);
}

/** Live forkvm QEMUs whose VM directory is `dir` or inside it (a template's builder lives in `<template dir>/builder`). */
export function qemusUnder(dir: string, all: QemuProcess[] = listQemus()): QemuProcess[] {
  const root = path.resolve(dir);
  return all.filter((q) => q.dir !== undefined && (q.dir === root || q.dir.startsWith(root + path.sep)));
}
