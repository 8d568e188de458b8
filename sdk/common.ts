// What the SDK's resources share: their Pulumi type names, the hidden inputs the providers need
// (logical name, URN for progress, upstream shape), and a registry that maps a resource's `id`
// output back to the resource so a pool can use its template's name and shape during preview.
import * as pulumi from "@pulumi/pulumi";

export const MODULE = "forkvm";

/** The type token Pulumi gives a dynamic resource of `kind`, as it appears in URNs. */
export function typeOf(kind: string): string {
  return `pulumi-nodejs:dynamic/${MODULE}:${kind}`;
}

/** Makes every input an Input<> (shallow), as Pulumi programs pass outputs of other resources. */
export type Inputs<T> = { [K in keyof T]: pulumi.Input<T[K]> };

/** Drops the SDK's own "__" inputs from a schema type. */
export type Public<T> = { [K in keyof T as K extends `__${string}` ? never : K]: T[K] };

/** The hidden inputs every resource passes: its logical name and its URN. */
export function hiddenInputs(name: string, kind: string, opts?: pulumi.CustomResourceOptions): Record<string, pulumi.Input<unknown>> {
  return { __logicalName: name, __urn: pulumi.createUrn(name, typeOf(kind), opts?.parent) };
}

/** `undefined` for every output, so the SDK resolves each one from the provider's outputs. */
export function seed(keys: readonly string[]): Record<string, undefined> {
  return Object.fromEntries(keys.map((k) => [k, undefined]));
}

const byOutput = new WeakMap<object, pulumi.Resource>();

/** Remembers that `outputs` (e.g. the resource's `id`) stand for `resource`. */
export function remember(resource: pulumi.Resource, ...outputs: object[]): void {
  for (const o of outputs) byOutput.set(o, resource);
}

/** The resource an input stands for, when it is one of ours or one of their remembered outputs. */
export function recall<R extends pulumi.Resource>(input: unknown, cls: abstract new (...args: any[]) => R): R | undefined {
  if (input instanceof cls) return input;
  const r = input && typeof input === "object" ? byOutput.get(input) : undefined;
  return r instanceof cls ? r : undefined;
}
