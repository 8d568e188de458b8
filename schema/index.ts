// The schemas of every resource's inputs and outputs: one file per resource, re-exported here.
export * from "./common";
export * from "./parent-vm";
export * from "./template";
export * from "./instant-clone-pool";
