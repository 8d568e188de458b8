// Shared by the provider and example suites: a fresh build of dist/ (the dynamic-provider host
// loads compiled JS by package name), the serialised providers exactly as Pulumi makes them,
// the engine of this suite's FORKVM_HOME, and a check that no QEMU of this home is left.
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { Engine } from "../../engine";
import { PACKAGE_ROOT } from "../../deploy/provider-host";

export const ROOT = PACKAGE_ROOT;

function newest(dir: string, ext: string): number {
  let t = 0;
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) t = Math.max(t, newest(p, ext));
    else if (e.name.endsWith(ext)) t = Math.max(t, fs.statSync(p).mtimeMs);
  }
  return t;
}

/** Runs `tsc` when dist/ is missing or older than the sources the host loads. */
export function ensureBuilt(): void {
  const dirs = ["engine", "provider", "deploy", "schema", "sdk"];
  const sources = Math.max(...dirs.map((d) => newest(path.join(ROOT, d), ".ts")));
  const built = dirs.every((d) => fs.existsSync(path.join(ROOT, "dist", d))) ? Math.min(...dirs.map((d) => newest(path.join(ROOT, "dist", d), ".js"))) : 0;
  if (built < sources) execFileSync(process.execPath, [require.resolve("typescript/bin/tsc"), "-p", path.join(ROOT, "tsconfig.json")], { cwd: ROOT, stdio: "inherit" });
}

/** The text Pulumi stores in `__provider`: the same serialiser `pulumi.dynamic.Resource` uses. */
export async function serialised(provider: object): Promise<string> {
  const { serializeFunction } = require("@pulumi/pulumi/runtime/closure/serializeClosure");
  const sf = await serializeFunction(() => provider, { allowSecrets: true });
  return sf.text;
}

export function engine(): Engine {
  return new Engine();
}

/** Pids of QEMU processes whose command line mentions this suite's home or memory dir. */
export function qemuOfThisSuite(): number[] {
  const markers = [process.env.FORKVM_HOME, process.env.FORKVM_MEMDIR].filter((m): m is string => Boolean(m));
  const pids: number[] = [];
  for (const pid of fs.readdirSync("/proc").filter((p) => /^\d+$/.test(p))) {
    try {
      const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, "utf8");
      if (cmd.includes("qemu") && markers.some((m) => cmd.includes(m))) pids.push(Number(pid));
    } catch {
      /* gone */
    }
  }
  return pids;
}

/** Removes everything this suite's engine holds (children first), whatever state it is in. */
export async function removeAll(e: Engine = engine()): Promise<void> {
  const templates = e.listTemplates().map((t) => t.name);
  await e.remove(templates, { force: true }).catch(() => undefined);
  await e.remove(e.listVms().map((v) => v.name), { force: true }).catch(() => undefined);
}

export function urnOf(type: string, name: string): string {
  return `urn:pulumi:test::forkvm::pulumi-nodejs:dynamic/forkvm:${type}::${name}`;
}

/** Seconds since `t0`, two decimals. */
export function secs(t0: number): number {
  return Math.round((Date.now() - t0) / 10) / 100;
}

const SECRET_SIG = "4dabf18193072939515e22adb298388d";

/** Values as a dynamic provider gets and returns them: the host declines secrets, so secret wrappers are unwrapped. */
export function plain(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(plain);
  if (v && typeof v === "object") {
    const o = v as Record<string, unknown>;
    if (o[SECRET_SIG]) return plain(o.value);
    return Object.fromEntries(Object.entries(o).map(([k, x]) => [k, plain(x)]));
  }
  return v;
}
