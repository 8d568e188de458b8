// What the SDK's resources share: their Pulumi type names, the hidden inputs the providers need
// (logical name, URN, the stack's forkvm home, where the secrets are), outputs kept secret where
// their input was, and a registry that maps a resource's `id` output back to the resource so a
// pool can use its template's name and shape during preview.
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

/**
 * The hidden inputs every resource passes: its logical name; its URN (progress on its row, the
 * seed of its generated name); the stack's `forkvm:home` config, when set (the provider creates
 * the resource in that home and records it); and `__secrets`, the paths of the inputs in `args`
 * that are Pulumi secrets (see `secretPaths`).
 */
export function hiddenInputs(name: string, kind: string, opts: pulumi.CustomResourceOptions | undefined, args: object, secrets: pulumi.Output<SecretPath[]> = secretPaths(args)): Record<string, pulumi.Input<unknown>> {
  const home = new pulumi.Config(MODULE).get("home");
  return {
    __logicalName: name,
    __urn: pulumi.createUrn(name, typeOf(kind), opts?.parent),
    ...(home ? { __home: home } : {}),
    __secrets: secrets,
  };
}

/** Where a secret sits in a resource's inputs: ["init", 1], ["metadata", "TOKEN"], or ["init"] for a whole input. */
export type SecretPath = Array<string | number>;

function isPlainObject(v: unknown): v is Record<string, unknown> {
  if (!v || typeof v !== "object") return false;
  const proto = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
}

/**
 * The paths of the Pulumi secrets in `args`, found by `pulumi.isSecret` on every Output at any
 * depth of plain arrays and objects (promises are awaited; a secret Output is one path, whatever
 * it holds). The result is an Output that is not itself secret and has no dependencies, so it
 * only says where secrets are, never what they are.
 */
export function secretPaths(args: object): pulumi.Output<SecretPath[]> {
  const found: SecretPath[] = [];
  const walk = async (v: unknown, at: SecretPath): Promise<void> => {
    if (pulumi.Output.isInstance(v)) {
      if (await pulumi.isSecret(v)) found.push(at);
      return;
    }
    if (v && typeof (v as PromiseLike<unknown>).then === "function") return walk(await v, at);
    if (Array.isArray(v)) await Promise.all(v.map((x, i) => walk(x, [...at, i])));
    else if (isPlainObject(v)) await Promise.all(Object.entries(v).map(([k, x]) => walk(x, [...at, k])));
  };
  const done = Promise.all(Object.entries(args).map(([k, v]) => walk(v, [k])));
  return pulumi.output(done.then(() => found.sort((a, b) => JSON.stringify(a).localeCompare(JSON.stringify(b)))));
}

/**
 * Makes each output of `resource` that has an input of the same name in `args` secret when that
 * input held a secret. The Pulumi engine does the same for what it stores (a dynamic provider
 * declines secrets, so the engine copies the secret mark from each input to the output of the
 * same name); doing it here too keeps the program's view secret wherever outputs come from
 * (mocks, the offline mode). Outputs without an input of their name are left as they are.
 */
export function keepSecret(resource: pulumi.Resource, args: object, secrets: pulumi.Output<SecretPath[]>): void {
  const target = resource as unknown as Record<string, pulumi.Output<unknown>>;
  for (const key of Object.keys(args)) {
    const out = target[key];
    if (!pulumi.Output.isInstance(out)) continue;
    target[key] = pulumi.all([out, secrets]).apply(([value, paths]) => (paths.some((p) => p[0] === key) ? pulumi.secret(value) : value));
  }
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
