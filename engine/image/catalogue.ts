// The image catalogue: where built images live (<cache>/images/<name>/), the manifest each one
// carries (image.json: its files, their sha256 and the inputs it was built from), and loading one.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { z } from "zod";
import { ForkvmError, messageOf } from "../errors";
import { sha256File } from "../util/hash";

export interface GuestImage {
  name: string;
  /** Directory holding the image files. */
  dir: string;
  /** Absolute path of the kernel: vmlinux (ELF, booted directly through its PVH entry) or vmlinuz. */
  kernel: string;
  /** Absolute path of the initramfs (gzip'd newc cpio). */
  initrd: string;
  /** Base kernel command line; callers append forkvm.hostname=..., forkvm.mkfs=1. */
  cmdline: string;
  /** `uname -r` inside the guest. */
  kernelVersion: string;
  /** Smallest guest memory (MiB) that boots to agent-ready, with a margin. */
  minMemoryMiB: number;
  /** Identifies the image content: sha256 over the kernel, initramfs and command line. */
  sha256: string;
}

/** Everything a build depends on: an image whose recorded inputs equal these needs no rebuild. */
export const ImageInputs = z.object({
  builder: z.number().int(),
  kernelPackage: z.string(),
  kernelPackageVersion: z.string(),
  busyboxVersion: z.string(),
  scriptsSha256: z.string().regex(/^[0-9a-f]{64}$/),
  modules: z.array(z.string()),
  cmdline: z.string(),
  minMemoryMiB: z.number().int(),
}).strict();
export type ImageInputs = z.infer<typeof ImageInputs>;

const Sha256 = z.string().regex(/^[0-9a-f]{64}$/);
export const ImageManifest = z.object({
  version: z.literal(1),
  name: z.string(),
  /** The kernel file QEMU boots: vmlinux when the kernel has a PVH entry, else vmlinuz. */
  kernel: z.enum(["vmlinux", "vmlinuz"]),
  initrd: z.literal("initrd.img"),
  cmdline: z.string(),
  kernelVersion: z.string().min(1),
  minMemoryMiB: z.number().int().positive(),
  sha256: z.string().regex(/^[0-9a-f]{64}$/),
  files: z.object({ vmlinuz: Sha256, "initrd.img": Sha256, vmlinux: Sha256.optional() }).strict(),
  modules: z.array(z.string()),
  inputs: ImageInputs,
}).strict();
export type ImageManifest = z.infer<typeof ImageManifest>;

/** `$FORKVM_CACHE`, else `${XDG_CACHE_HOME:-$HOME/.cache}/forkvm`. */
export function cacheDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.FORKVM_CACHE) return path.resolve(env.FORKVM_CACHE);
  const base = env.XDG_CACHE_HOME || path.join(env.HOME || os.homedir(), ".cache");
  return path.join(base, "forkvm");
}

/** The directory of image `name` in `cache`. It is named for the image, not keyed by its inputs. */
export function imageDir(cache: string, name: string): string {
  return path.join(cache, "images", name);
}

/**
 * The image `name` as last built. Throws NOT_FOUND when it was never built, STATE when its
 * manifest is unreadable or invalid, IMAGE when its files are missing (or, with `verify`,
 * do not match their recorded sha256).
 */
export async function loadImage(name = "default", opts: { cacheDir?: string; verify?: boolean } = {}): Promise<GuestImage> {
  const dir = imageDir(opts.cacheDir ?? cacheDir(), name);
  const manifest = readManifest(dir, name);
  if (!manifest) {
    throw new ForkvmError("NOT_FOUND", `Cannot load image ${name}: not built; run \`forkvm image build\``, { details: { dir } });
  }
  for (const [file, sum] of Object.entries(manifest.files)) {
    const p = path.join(dir, file);
    if (!fs.existsSync(p)) throw new ForkvmError("IMAGE", `Cannot load image ${name}: ${p} is missing; rebuild it with \`forkvm image build --force\``);
    if (opts.verify && (await sha256File(p)) !== sum) {
      throw new ForkvmError("IMAGE", `Cannot load image ${name}: ${p} does not match its manifest; rebuild it with \`forkvm image build --force\``);
    }
  }
  return toGuestImage(dir, manifest);
}

/**
 * The manifest in `dir`, or undefined when there is none. Throws STATE when it is unreadable,
 * not JSON, or not a valid manifest.
 */
export function readManifest(dir: string, name: string): ImageManifest | undefined {
  const file = path.join(dir, "image.json");
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw new ForkvmError("STATE", `Cannot read image ${name}: ${messageOf(err)}`, { cause: err });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new ForkvmError("STATE", `Cannot read image ${name}: ${file} is not JSON: ${messageOf(err)}`, { cause: err });
  }
  const parsed = ImageManifest.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new ForkvmError("STATE", `Cannot read image ${name}: ${file}: ${issue?.path.join(".") || "manifest"}: ${issue?.message}`, {
      details: { issues: parsed.error.issues },
    });
  }
  return parsed.data;
}

/** The manifest in `dir`, or undefined when there is none or it cannot be read. Never throws. */
export function safeReadManifest(dir: string, name: string): ImageManifest | undefined {
  try {
    return readManifest(dir, name);
  } catch {
    return undefined;
  }
}

/**
 * The image in `dir` when it was built from exactly `inputs` and every file still matches its
 * recorded sha256; undefined when it must be (re)built. Never throws.
 */
export async function upToDateImage(dir: string, name: string, inputs: ImageInputs): Promise<GuestImage | undefined> {
  const m = safeReadManifest(dir, name);
  if (!m || JSON.stringify(m.inputs) !== JSON.stringify(inputs)) return undefined;
  for (const [f, sum] of Object.entries(m.files)) {
    if ((await sha256File(path.join(dir, f)).catch(() => undefined)) !== sum) return undefined;
  }
  return toGuestImage(dir, m);
}

/** The GuestImage a manifest in `dir` describes (absolute paths). */
export function toGuestImage(dir: string, m: ImageManifest): GuestImage {
  return {
    name: m.name,
    dir,
    kernel: path.join(dir, m.kernel),
    initrd: path.join(dir, m.initrd),
    cmdline: m.cmdline,
    kernelVersion: m.kernelVersion,
    minMemoryMiB: m.minMemoryMiB,
    sha256: m.sha256,
  };
}
