// A template's files on disk (memory image, device checkpoint, base disk, the empty delta-disk
// prototype) and the one check of whether they are whole.
import * as fs from "node:fs";
import * as path from "node:path";
import { randomBytes } from "node:crypto";
import { ForkvmError } from "../errors";
import type { TemplateManifest } from "../state/manifest";
import { createDisk } from "../qemu/process";
import { sha256 } from "../util/hash";

/**
 * What is wrong with a template's files, if anything: a missing or truncated memory image, a
 * checkpoint missing or (with `deep`) not matching its checksum, a missing base disk.
 */
export function templateProblems(t: TemplateManifest, opts: { deep?: boolean } = {}): string[] {
  const problems: string[] = [];
  const mem = fs.statSync(t.memoryPath, { throwIfNoEntry: false });
  if (!mem) problems.push(`memory image ${t.memoryPath} is missing`);
  else if (mem.size < t.shape.memoryMiB * 1048576) problems.push(`memory image ${t.memoryPath} is truncated`);
  if (!fs.existsSync(t.statePath)) problems.push(`checkpoint ${t.statePath} is missing`);
  else if (opts.deep && sha256(fs.readFileSync(t.statePath)) !== t.stateSha256) problems.push(`checkpoint ${t.statePath} does not match its checksum`);
  if (t.diskPath && !fs.existsSync(t.diskPath)) problems.push(`base disk ${t.diskPath} is missing`);
  return problems;
}

/**
 * Checks the template's files are whole and returns the checkpoint it checked: children load
 * exactly these bytes. Throws STATE naming what is wrong.
 */
export function checkTemplate(t: TemplateManifest): Buffer {
  const problems = templateProblems(t);
  if (problems.length) throw new ForkvmError("STATE", `Cannot fork template ${t.name}: ${problems.join("; ")}`, { details: { problems } });
  const state = fs.readFileSync(t.statePath);
  if (sha256(state) !== t.stateSha256) {
    throw new ForkvmError("STATE", `Cannot fork template ${t.name}: checkpoint ${t.statePath} does not match its checksum`, { details: { problems: ["checksum"] } });
  }
  return state;
}

/** Where a template keeps an empty delta disk on its base: every child's starts as a copy of it. */
export function overlayPrototypePath(t: TemplateManifest): string {
  return path.join(path.dirname(t.statePath), "overlay.qcow2");
}

/**
 * Makes the template's empty overlay once (qemu-img), so that a child's delta disk is a file copy
 * (~0.1 ms) instead of a qemu-img process (~15 ms). An empty qcow2 overlay does not depend on its
 * own path, only on the backing file's. Written to a temp name and renamed: never seen half-made.
 */
export async function ensureOverlayPrototype(t: TemplateManifest): Promise<string | undefined> {
  if (!t.diskPath) return undefined;
  const proto = overlayPrototypePath(t);
  if (fs.existsSync(proto)) return proto;
  const tmp = `${proto}.${process.pid}.${randomBytes(3).toString("hex")}`;
  try {
    await createDisk(tmp, { backing: t.diskPath });
    fs.renameSync(tmp, proto);
  } finally {
    fs.rmSync(tmp, { force: true });
  }
  return proto;
}
