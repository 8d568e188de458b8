// The provider objects the SDK hands to Pulumi. Pulumi serialises each one as a closure into the
// stack's state, and the dynamic-provider host re-creates it from that text in a plain node
// process. So they hold no data and capture only the resource's name: each method loads the implementation by
// package name ("forkvm/provider/<resource>", compiled JS in dist/) when it is called.
import type * as pulumi from "@pulumi/pulumi";

/**
 * Loads a provider implementation by package name. The host evaluates the provider text as a
 * module without a file, so a plain require would not find "forkvm" from the project itself:
 * resolve from the project directory (the host's cwd), which finds node_modules/forkvm in a
 * user's project and the package itself (through its exports map) in this repository.
 */
function load(resource: string) {
  const { createRequire } = require("node:module");
  const id = `forkvm/provider/${resource}`;
  try {
    return createRequire(`${process.cwd()}/`)(id);
  } catch (err) {
    if ((err as { code?: string }).code !== "MODULE_NOT_FOUND") throw err;
    return require(id);
  }
}

/** The provider of one resource: each method loads its implementation when called. */
function providerOf(resource: string): pulumi.dynamic.ResourceProvider {
  return {
    check: (olds, news) => load(resource).check(olds, news),
    diff: (id, olds, news) => load(resource).diff(id, olds, news),
    create: (inputs) => load(resource).create(inputs),
    read: (id, props) => load(resource).read(id, props),
    update: (id, olds, news) => load(resource).update(id, olds, news),
    delete: (id, props) => load(resource).remove(id, props),
  };
}

export const parentVmProvider = providerOf("parent-vm");
export const templateProvider = providerOf("template");
export const instantClonePoolProvider = providerOf("instant-clone-pool");
