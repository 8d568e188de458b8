// The default fleet that `npm run up` deploys: a parent booted and warmed, frozen into a
// powered-on template, and a pool of 4 non-persistent children forked from it.
// Resize with `pulumi config set size 8` (Pulumi CLI) or by editing the default below.
import * as pulumi from "@pulumi/pulumi";
import { InstantClonePool, ParentVm, Template } from "./sdk";

const config = new pulumi.Config();
const size = config.getNumber("size") ?? 4;

const parent = new ParentVm("fleet", {
  memoryMiB: 256,
  init: [
    // Warm what every child should find ready: a file in RAM and a running service.
    "echo warm since $(date +%s) > /tmp/state",
    "mkdir -p /www && echo hello from the fleet > /www/index.html && httpd -p 80 -h /www",
  ],
});

const template = new Template("fleet-t", { parent: parent.id, source: "frozen" });

const pool = new InstantClonePool("fleet-pool", {
  template: template.id,
  size,
  persistent: false,
  metadata: { ROLE: "fleet", SLOT: "{index}" },
  updatePolicy: { maxUnavailable: "25%" },
});

export const children = pool.children.apply((cs) => cs.map((c) => ({ name: c.name, mac: c.mac, generation: c.generation, status: c.status })));
export const estimate = pool.estimate.apply((e) => e.summary);
export const generation = template.generation;
export const tryIt = pool.namePrefix.apply((p) => `forkvm exec ${p}-1 -- cat /tmp/state /etc/forkvm/metadata`);
