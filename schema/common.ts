// Pieces every resource schema shares: names, MAC prefixes, port numbers, the SDK's hidden inputs.
// The resource schemas are the one source of truth: provider checks, SDK types and docs derive from them.
import { z } from "zod";
import { NAME_RE } from "../engine/manifest";

/** A VM or template name in the engine: also the guest's hostname. */
export const VmName = z
  .string()
  .regex(NAME_RE, "must be lower-case letters, digits and '-', 1 to 63 characters, starting with a letter or digit");

/** 1 to 5 hex octets, e.g. "52:54:00" (QEMU's locally administered range). */
export const MAC_PREFIX_RE = /^([0-9a-fA-F]{2})(:[0-9a-fA-F]{2}){0,4}$/;
export const MacPrefix = z.string().regex(MAC_PREFIX_RE, "must be 1 to 5 hex octets separated by ':', e.g. 52:54:00");

export const Port = z.number().int("must be an integer").min(1, "must be at least 1").max(65535, "must be at most 65535");
export const Proto = z.enum(["tcp", "udp"]);
export const Accel = z.enum(["auto", "kvm", "tcg"]);

/** A port forward as it runs: 127.0.0.1:host on the host reaches guest inside the VM. */
export const ResolvedForward = z.object({ guest: Port, host: Port, proto: Proto }).strict();
export type ResolvedForward = z.infer<typeof ResolvedForward>;

/** The guest shape a template passes on to its pool (memory, vCPUs, base disk), for estimates. */
export const Shape = z
  .object({
    memoryMiB: z.number().int().min(1),
    vcpus: z.number().int().min(1),
    diskMiB: z.number().min(0),
    accel: z.enum(["auto", "kvm", "tcg"]),
  })
  .strict();
export type Shape = z.infer<typeof Shape>;

/**
 * Inputs the SDK adds on its own; users never write them. Keys starting with "__" are hidden by
 * the Pulumi CLI's display.
 *  __logicalName: the resource's name in the program, the base of generated names;
 *  __urn:         the resource's URN, so the provider can report progress on the resource's row;
 *  __autoNamed:   set by check when it generated the name (a pinned name forces delete-before-replace);
 *  __shape:       the upstream resource's shape while it is not created yet (preview estimates).
 */
export const SdkInputs = {
  __logicalName: z.string().optional(),
  __urn: z.string().optional(),
  __autoNamed: z.boolean().optional(),
  __shape: Shape.optional(),
};
