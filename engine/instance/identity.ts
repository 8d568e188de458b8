// Identities a VM instance is given: the token that marks its QEMU process, its MAC, its hostname.
import { randomBytes } from "node:crypto";

/** A new token for one QEMU process (in its command line, so a pid can be verified). */
export function newToken(): string {
  return randomBytes(6).toString("hex");
}

export const DEFAULT_MAC_PREFIX = "52:54:00";

/** A random MAC under `prefix` (1 to 5 octets, default QEMU's 52:54:00). */
export function randomMac(prefix = DEFAULT_MAC_PREFIX): string {
  const octets = prefix.split(":").filter(Boolean);
  const rest = [...randomBytes(6 - octets.length)].map((b) => b.toString(16).padStart(2, "0"));
  return [...octets.map((o) => o.toLowerCase().padStart(2, "0")), ...rest].join(":");
}

/** A valid DNS label derived from a VM name. */
export function hostnameFor(name: string): string {
  return name.toLowerCase().replace(/[^a-z0-9-]/g, "-").replace(/^-+/, "").slice(0, 63).replace(/-+$/, "") || "forkvm";
}
