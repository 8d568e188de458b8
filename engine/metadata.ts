// Per-VM metadata handed to the guest: /etc/forkvm/metadata.json (an object of strings) and
// /etc/forkvm/metadata (KEY='value' lines a shell can source). Written after every fork, reset
// and start, so the guest always sees what the manifest says.
import { ForkvmError } from "./errors";
import type { AgentClient } from "./guest/client";

export const METADATA_KEY_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** The shell-sourceable form: KEY='value' lines, single quotes escaped. */
export function metadataEnv(md: Record<string, string>): string {
  return Object.entries(md).map(([k, v]) => `${k}='${v.replace(/'/g, "'\\''")}'\n`).join("");
}

/** Writes the metadata files in the guest (argv only: values never pass through a shell's parser). */
export async function writeMetadata(agent: AgentClient, md: Record<string, string>, timeoutMs = 30_000): Promise<void> {
  for (const k of Object.keys(md)) {
    if (!METADATA_KEY_RE.test(k)) throw new ForkvmError("INVALID_ARGUMENT", `Cannot write metadata key ${JSON.stringify(k)}: keys are letters, digits and _ , not starting with a digit`, { details: { field: `metadata.${k}` } });
  }
  const script = 'mkdir -p /etc/forkvm && printf %s "$1" > /etc/forkvm/metadata.json && printf %s "$2" > /etc/forkvm/metadata';
  const r = await agent.exec(["sh", "-c", script, "sh", JSON.stringify(md), metadataEnv(md)], { timeoutMs });
  if (r.exitCode !== 0) throw new ForkvmError("AGENT", `Cannot write metadata in the guest: exit ${r.exitCode}: ${r.stderr.toString().trim()}`);
}
