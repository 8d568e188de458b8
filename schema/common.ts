// Pieces every resource schema shares. Every input rule (names, MACs, ports, ranges, defaults)
// comes from the engine's one spec (engine/spec.ts); this layer adds only Pulumi-level fields
// (generated names, the SDK's hidden inputs) and the outputs' shapes.
import { z } from "zod";
import { Accel, MAC_PREFIX_RE, MacPrefix, Name, Port, Proto } from "../engine/spec";

/** A VM, template or pool name in the engine: also the guest's hostname. */
export const VmName = Name;
export { Accel, MAC_PREFIX_RE, MacPrefix, Port, Proto };

/** A port forward as it runs: 127.0.0.1:host on the host reaches guest inside the VM. */
export const ResolvedForward = z.object({ guest: Port, host: Port, proto: Proto, auto: z.boolean().optional().describe("The engine picked the host port (it may pick another one at a restart if this one is taken).") }).strict();
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
 *  __shape:       the upstream resource's shape while it is not created yet (preview estimates);
 *  __home:        the stack's `forkvm:home` config as the SDK read it; check replaces it with the
 *                 absolute home the resource lives in (outputs carry that as `home`);
 *  __secrets:     the paths of inputs given as Pulumi secrets, e.g. [["init", 0]], [["metadata", "TOKEN"]]:
 *                 the dynamic-provider host hands providers plain values, so this is how they know
 *                 what to keep out of messages.
 */
export const SdkInputs = {
  __logicalName: z.string().optional(),
  __urn: z.string().optional(),
  __autoNamed: z.boolean().optional(),
  __shape: Shape.optional(),
  __home: z.string().min(1).optional(),
  __secrets: z.array(z.array(z.union([z.string(), z.number()]))).optional(),
};
