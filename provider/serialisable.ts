// The provider objects the SDK hands to Pulumi. Pulumi serialises each one as a closure into the
// stack's state, and the dynamic-provider host re-creates it from that text in a plain node
// process. So they hold no data and capture nothing: each method loads the implementation by
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

export const parentVmProvider: pulumi.dynamic.ResourceProvider = {
  check: (olds, news) => load("parent-vm").check(olds, news),
  diff: (id, olds, news) => load("parent-vm").diff(id, olds, news),
  create: (inputs) => load("parent-vm").create(inputs),
  read: (id, props) => load("parent-vm").read(id, props),
  update: (id, olds, news) => load("parent-vm").update(id, olds, news),
  delete: (id, props) => load("parent-vm").remove(id, props),
};

export const templateProvider: pulumi.dynamic.ResourceProvider = {
  check: (olds, news) => load("template").check(olds, news),
  diff: (id, olds, news) => load("template").diff(id, olds, news),
  create: (inputs) => load("template").create(inputs),
  read: (id, props) => load("template").read(id, props),
  update: (id, olds, news) => load("template").update(id, olds, news),
  delete: (id, props) => load("template").remove(id, props),
};

export const instantClonePoolProvider: pulumi.dynamic.ResourceProvider = {
  check: (olds, news) => load("instant-clone-pool").check(olds, news),
  diff: (id, olds, news) => load("instant-clone-pool").diff(id, olds, news),
  create: (inputs) => load("instant-clone-pool").create(inputs),
  read: (id, props) => load("instant-clone-pool").read(id, props),
  update: (id, olds, news) => load("instant-clone-pool").update(id, olds, news),
  delete: (id, props) => load("instant-clone-pool").remove(id, props),
};
