// Kernel modules: modules.dep parsing, and the closure of the modules the guest needs in load
// order, taken from an unpacked kernel package (depmod'ing it first when it has no modules.dep).
import * as fs from "node:fs";
import * as path from "node:path";
import { ForkvmError } from "../errors";
import { run } from "../util/run";

/** The module name of a path in modules.dep: basename without .ko[.xz|.zst|.gz], '-' as '_'. */
export function moduleName(file: string): string {
  return path.posix.basename(file).replace(/\.ko(\.(xz|zst|gz))?$/, "").replace(/-/g, "_");
}

/** modules.dep as a map from module path to the paths it depends on. */
export function parseModulesDep(text: string): Map<string, string[]> {
  const deps = new Map<string, string[]>();
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!line || line.startsWith("#")) continue;
    const colon = line.indexOf(":");
    if (colon <= 0) throw new ForkvmError("IMAGE", `Cannot parse modules.dep: no ':' in line "${line}"`);
    deps.set(line.slice(0, colon).trim(), line.slice(colon + 1).trim().split(/\s+/).filter(Boolean));
  }
  return deps;
}

/**
 * The paths of `roots` (module names) and everything they depend on, in load order: every
 * module after all of its dependencies; otherwise in the order of `roots`. Throws IMAGE when a
 * root is unknown or the dependencies form a cycle.
 */
export function moduleClosure(depText: string, roots: string[]): string[] {
  const deps = parseModulesDep(depText);
  const byName = new Map<string, string>();
  for (const p of deps.keys()) byName.set(moduleName(p), p);
  const order: string[] = [];
  const state = new Map<string, "visiting" | "done">();
  const visit = (p: string, chain: string[]) => {
    const s = state.get(p);
    if (s === "done") return;
    if (s === "visiting") throw new ForkvmError("IMAGE", `Cannot resolve kernel modules: dependency cycle ${[...chain, p].map(moduleName).join(" -> ")}`);
    state.set(p, "visiting");
    for (const d of deps.get(p) ?? []) visit(d, [...chain, p]);
    state.set(p, "done");
    order.push(p);
  };
  for (const r of roots) {
    const p = byName.get(r.replace(/-/g, "_"));
    if (!p) throw new ForkvmError("IMAGE", `Cannot resolve kernel modules: ${r} is not in modules.dep (built in, or missing from the kernel package?)`);
    visit(p, []);
  }
  return order;
}

/**
 * The closure of `roots` in the modules of kernel `kernelVersion` unpacked under `root` (its
 * modules in `modRoot`), as paths relative to `modRoot`. Debian generates modules.dep at install
 * time (depmod in postinst); when it is absent it is generated the same way, with busybox depmod.
 * Throws IMAGE when depmod fails, a root is unknown, or a module is compressed.
 */
export async function kernelModuleClosure(p: { root: string; kernelVersion: string; modRoot: string; roots: string[]; busyboxPath: string }): Promise<string[]> {
  const depFile = path.join(p.modRoot, "modules.dep");
  if (!fs.existsSync(depFile)) {
    await run(p.busyboxPath, ["depmod", "-b", p.root, p.kernelVersion], { what: "generate modules.dep", code: "IMAGE", timeoutMs: 120_000 });
  }
  const modules = moduleClosure(fs.readFileSync(depFile, "utf8"), p.roots);
  const compressed = modules.filter((m) => !m.endsWith(".ko"));
  if (compressed.length) {
    throw new ForkvmError("IMAGE", `Cannot resolve kernel modules: compressed modules are not supported (${compressed.join(", ")})`);
  }
  return modules;
}
