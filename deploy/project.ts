// A Pulumi project on disk, as the Pulumi CLI reads it: Pulumi.yaml (name, runtime, main) and the
// stack's Pulumi.<stack>.yaml (plain config values). Used by `npm run up` and the offline deployment.
import * as fs from "node:fs";
import * as path from "node:path";
import * as yaml from "js-yaml";
import { ForkvmError, messageOf } from "../engine/errors";

export interface Project {
  name: string;
  /** The program's entry file, absolute. */
  main: string;
  dir: string;
}

function readYaml(file: string, what: string): unknown {
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch (err) {
    throw new ForkvmError((err as NodeJS.ErrnoException).code === "ENOENT" ? "NOT_FOUND" : "STATE", `Cannot read ${what} ${file}: ${messageOf(err)}`, { cause: err });
  }
  try {
    return yaml.load(text);
  } catch (err) {
    throw new ForkvmError("STATE", `Cannot read ${what} ${file}: ${messageOf(err)}`, { cause: err });
  }
}

/**
 * The project in `projectDir`: its name and program path from Pulumi.yaml (`main` defaults to
 * index.ts). Throws NOT_FOUND without a Pulumi.yaml, STATE when it is unreadable or has no name,
 * INVALID_ARGUMENT when its runtime is not nodejs.
 */
export function readProject(projectDir: string): Project {
  const dir = path.resolve(projectDir);
  const file = path.join(dir, "Pulumi.yaml");
  const doc = readYaml(file, "the Pulumi project") as { name?: unknown; main?: unknown; runtime?: unknown } | undefined;
  if (typeof doc?.name !== "string" || !doc.name) throw new ForkvmError("STATE", `Cannot read the Pulumi project ${file}: no project name`);
  const runtime = typeof doc.runtime === "string" ? doc.runtime : (doc.runtime as { name?: unknown } | undefined)?.name;
  if (runtime !== "nodejs") throw new ForkvmError("INVALID_ARGUMENT", `Cannot run the Pulumi project ${file}: runtime ${String(runtime)} is not nodejs`, { details: { field: "runtime" } });
  return { name: doc.name, main: path.resolve(dir, typeof doc.main === "string" ? doc.main : "index.ts"), dir };
}

/**
 * The stack's configuration from Pulumi.<stack>.yaml, the file `pulumi config set` writes, as
 * `namespace:key` → string (a key without a namespace belongs to the project). Throws STATE when
 * the file is unreadable, INVALID_ARGUMENT for a secret value (only the Pulumi CLI can decrypt it).
 */
export function stackConfig(projectDir: string, project: string, stack: string): Record<string, string> {
  const file = path.join(projectDir, `Pulumi.${stack}.yaml`);
  if (!fs.existsSync(file)) return {};
  const doc = readYaml(file, "the stack configuration") as { config?: Record<string, unknown> } | null | undefined;
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(doc?.config ?? {})) {
    if (v && typeof v === "object" && "secure" in v) {
      throw new ForkvmError("INVALID_ARGUMENT", `Cannot read the stack configuration ${file}: ${k} is a secret, which only the Pulumi CLI can decrypt`, { details: { field: k } });
    }
    out[k.includes(":") ? k : `${project}:${k}`] = typeof v === "string" ? v : JSON.stringify(v);
  }
  return out;
}
