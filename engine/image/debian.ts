// Debian packages the image is made from: the kernel package linux-image-amd64 depends on
// (resolved with apt-cache, fetched with apt-get download into a cache of .debs, unpacked with
// dpkg -x, never installed) and the host's busybox-static.
import * as fs from "node:fs";
import * as path from "node:path";
import { ForkvmError } from "../errors";
import { run } from "../util/run";

const KERNEL_META_PACKAGE = "linux-image-amd64";
const BUSYBOX_PACKAGE = "busybox-static";

/** What apt and dpkg are run with: they never ask a question. */
const DEBIAN_ENV = { DEBIAN_FRONTEND: "noninteractive" };

/**
 * The host's static busybox and its package version. Throws HOST when busybox-static is not
 * installed (or its binary is missing).
 */
export async function findBusybox(): Promise<{ path: string; version: string }> {
  let version: string;
  try {
    version = (await run("dpkg-query", ["-W", "-f=${Status}\t${Version}", BUSYBOX_PACKAGE], { what: `query ${BUSYBOX_PACKAGE}`, code: "HOST", env: DEBIAN_ENV })).trim();
  } catch (err) {
    throw new ForkvmError("HOST", `Cannot build image default: ${BUSYBOX_PACKAGE} is not installed; run scripts/setup.sh`, {
      cause: err,
      details: err instanceof ForkvmError ? err.details : {},
    });
  }
  const [status, ver] = version.split("\t");
  if (!status?.endsWith(" installed") || !ver) {
    throw new ForkvmError("HOST", `Cannot build image default: ${BUSYBOX_PACKAGE} is not installed; run scripts/setup.sh`);
  }
  const candidate = ["/usr/bin/busybox", "/bin/busybox"].find((p) => fs.existsSync(p));
  if (!candidate) throw new ForkvmError("HOST", `Cannot build image default: ${BUSYBOX_PACKAGE} is installed but /bin/busybox is missing`);
  return { path: fs.realpathSync(candidate), version: ver };
}

/**
 * The versioned kernel package that `linux-image-amd64` depends on, and its version: one
 * `apt-cache show` of the candidate meta package (its Depends pins "(= version)").
 * Throws HOST when apt-cache fails or names no kernel package (no apt lists), TIMEOUT after 60 s.
 */
export async function resolveKernelPackage(): Promise<{ pkg: string; version: string }> {
  const meta = await run("apt-cache", ["show", "--no-all-versions", KERNEL_META_PACKAGE], { what: `resolve ${KERNEL_META_PACKAGE}`, code: "HOST", env: DEBIAN_ENV });
  const dep = parseKernelDepends(meta);
  if (!dep) {
    throw new ForkvmError("HOST", `Cannot resolve ${KERNEL_META_PACKAGE}: it depends on no linux-image-* package; run scripts/setup.sh (apt-get update)`, {
      details: { stdout: meta.split("\n").slice(0, 20).join("\n") },
    });
  }
  if (dep.version) return { pkg: dep.pkg, version: dep.version };
  const show = await run("apt-cache", ["show", "--no-all-versions", dep.pkg], { what: `resolve ${dep.pkg}`, code: "HOST", env: DEBIAN_ENV });
  const version = /^Version:\s*(\S+)/m.exec(show)?.[1];
  if (!version) throw new ForkvmError("HOST", `Cannot resolve ${dep.pkg}: apt-cache show printed no Version`);
  return { pkg: dep.pkg, version };
}

/**
 * The first versioned linux-image dependency (and its pinned version, if any) in the Depends
 * field of `apt-cache show` output, or in the "Depends:" lines of `apt-cache depends` output.
 */
export function parseKernelDepends(text: string): { pkg: string; version?: string } | undefined {
  for (const line of text.split("\n")) {
    const m = /^\s*\|?Depends:\s*(.*)$/.exec(line);
    if (!m) continue;
    for (const alt of m[1]!.split(/[,|]/)) {
      const d = /^\s*(linux-image-\d[^\s(]*)\s*(?:\(\s*=\s*([^\s)]+)\s*\))?/.exec(alt);
      if (d) return { pkg: d[1]!, ...(d[2] ? { version: d[2] } : {}) };
    }
  }
  return undefined;
}

/**
 * The .deb of pkg=version in `debs`, downloaded with apt-get when not there yet. Throws IMAGE
 * when the download fails, TIMEOUT after 10 minutes.
 */
export async function downloadKernel(debs: string, pkg: string, version: string): Promise<string> {
  fs.mkdirSync(debs, { recursive: true });
  const existing = await findDeb(debs, pkg, version);
  if (existing) return existing;
  const args = ["download", "-q", `${pkg}=${version}`];
  // As root apt would warn that its sandbox user cannot write here; it is our own cache.
  if (process.getuid?.() === 0) args.unshift("-o", "APT::Sandbox::User=root");
  await run("apt-get", args, { cwd: debs, what: `download ${pkg} ${version}`, code: "IMAGE", env: DEBIAN_ENV, timeoutMs: 600_000 });
  const deb = await findDeb(debs, pkg, version);
  if (!deb) throw new ForkvmError("IMAGE", `Cannot download ${pkg} ${version}: apt-get succeeded but left no matching .deb in ${debs}`);
  return deb;
}

async function findDeb(debs: string, pkg: string, version: string): Promise<string | undefined> {
  for (const f of fs.readdirSync(debs).sort()) {
    if (!f.startsWith(`${pkg}_`) || !f.endsWith(".deb")) continue;
    const file = path.join(debs, f);
    try {
      const fields = await run("dpkg-deb", ["-f", file, "Package", "Version"], { what: `read ${f}`, code: "IMAGE", env: DEBIAN_ENV });
      if (fields.includes(`Package: ${pkg}\n`) && fields.includes(`Version: ${version}\n`)) return file;
    } catch {
      fs.rmSync(file, { force: true }); // a truncated download
    }
  }
  return undefined;
}

/** Removes every kernel .deb in `debs` but `keep`. */
export function pruneDebs(debs: string, keep: string): void {
  for (const f of fs.readdirSync(debs)) {
    if (f.startsWith("linux-image-") && path.join(debs, f) !== keep) fs.rmSync(path.join(debs, f), { force: true });
  }
}

/**
 * Unpacks the kernel package `deb` (of package `pkg`) into `root` with dpkg -x, and says where
 * its kernel and modules are. Throws IMAGE when dpkg fails or the package lacks either,
 * TIMEOUT after 5 minutes.
 */
export async function extractKernelPackage(deb: string, pkg: string, root: string): Promise<{ kernelVersion: string; vmlinuz: string; modRoot: string }> {
  await run("dpkg", ["-x", deb, root], { what: `extract kernel package ${path.basename(deb)}`, code: "IMAGE", env: DEBIAN_ENV, timeoutMs: 300_000 });
  const kernelVersion = pkg.replace(/^linux-image-/, "");
  const vmlinuz = path.join(root, "boot", `vmlinuz-${kernelVersion}`);
  const modRoot = path.join(root, "lib", "modules", kernelVersion);
  if (!fs.existsSync(vmlinuz) || !fs.existsSync(modRoot)) {
    throw new ForkvmError("IMAGE", `Cannot extract kernel package ${path.basename(deb)}: no boot/vmlinuz-${kernelVersion} or lib/modules/${kernelVersion} in it`);
  }
  return { kernelVersion, vmlinuz, modRoot };
}
