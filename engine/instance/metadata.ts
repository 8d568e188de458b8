// Per-VM metadata handed to the guest: /etc/forkvm/metadata.json (an object of strings) and
// /etc/forkvm/metadata (KEY='value' lines a shell can source). Written after every fork, reset
// and start (instance/boot.ts settle) and by setMetadata, so the guest sees what the manifest says.
import { ForkvmError } from "../errors";
import type { AgentClient } from "../guest/client";
import { METADATA_KEY_RE } from "../spec";

/** The shell-sourceable form: KEY='value' lines, single quotes escaped. */
export function metadataEnv(md: Record<string, string>): string {
  return Object.entries(md).map(([k, v]) => `${k}='${v.replace(/'/g, "'\\''")}'\n`).join("");
}

/** The JSON form. */
export function metadataJson(md: Record<string, string>): string {
  return `${JSON.stringify(md, null, 2)}\n`;
}

// Each file is written beside itself and renamed: a reader never sees half a file.
const WRITE =
  'mkdir -p /etc/forkvm && printf %s "$1" > /etc/forkvm/metadata.json.new && printf %s "$2" > /etc/forkvm/metadata.new && ' +
  "mv /etc/forkvm/metadata.json.new /etc/forkvm/metadata.json && mv /etc/forkvm/metadata.new /etc/forkvm/metadata";

/**
 * Writes the metadata files in the guest (argv only: values never pass through a shell's parser).
 * Throws INVALID_ARGUMENT for a key that is not a shell variable name, AGENT when the guest fails.
 */
export async function writeMetadata(agent: AgentClient, md: Record<string, string>, timeoutMs = 30_000): Promise<void> {
  for (const k of Object.keys(md)) {
    if (!METADATA_KEY_RE.test(k)) throw new ForkvmError("INVALID_ARGUMENT", `Cannot write metadata key ${JSON.stringify(k)}: keys are letters, digits and _ , not starting with a digit`, { details: { field: `metadata.${k}` } });
  }
  const r = await agent.exec(["sh", "-c", WRITE, "sh", metadataJson(md), metadataEnv(md)], { timeoutMs });
  if (r.exitCode !== 0) throw new ForkvmError("AGENT", `Cannot write metadata in the guest: exit ${r.exitCode}: ${r.stderr.toString().trim().slice(-300)}`);
}
