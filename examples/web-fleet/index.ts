// Identical web servers for a load balancer. The parent loads the site and starts httpd; a live
// capture (source "running": the parent pauses a few ms and keeps running) becomes the template;
// a persistent pool forks the servers, child n listening on 127.0.0.1:(basePort+n-1).
// `pulumi config set revision 2` captures a new template and rolls the servers over one at a time.
import * as pulumi from "@pulumi/pulumi";
import { InstantClonePool, ParentVm, Template } from "forkvm";

const config = new pulumi.Config();
const size = config.getNumber("size") ?? 3;
const basePort = config.getNumber("basePort") ?? 18080;
const revision = config.get("revision") ?? "1";

const parent = new ParentVm("web", {
  memoryMiB: 256,
  init: [
    "mkdir -p /www && echo '<h1>forkvm web fleet</h1>' > /www/index.html",
    // Each server says who it is: its metadata, written by the pool after the fork.
    "ln -sf /etc/forkvm/metadata /www/whoami",
    "httpd -p 80 -h /www",
  ],
});

// A new revision is a new capture of the running parent: a new template generation.
const template = new Template("web-t", { parent, source: "running", revision });

const servers = new InstantClonePool("web", {
  template,
  size,
  persistent: true,
  forwards: [{ guest: 80, hostBase: basePort }],
  metadata: { BACKEND: "{name}", SITE_REVISION: revision },
  // Never more than one server down during a rollout.
  updatePolicy: { maxUnavailable: 1 },
});

export const urls = servers.children.apply((cs) => cs.map((c) => `http://127.0.0.1:${c.forwards[0]?.host}/`));
// Paste into an nginx `upstream web { ... }` block.
export const upstream = servers.children.apply((cs) => cs.map((c) => `server 127.0.0.1:${c.forwards[0]?.host};`).join("\n"));
export const generation = servers.generation;
export const estimate = servers.estimate.apply((e) => e.summary);
