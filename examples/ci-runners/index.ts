// CI runners that start warm in milliseconds. The parent loads the toolchain into memory once;
// frozen into a powered-on template, it gives every runner the same warm state. Runners are
// non-persistent: a job runs in a child, then `npm run job` resets it to the template (a fresh
// fork in place: same name and MAC, nothing of the job left).
import * as pulumi from "@pulumi/pulumi";
import { InstantClonePool, ParentVm, Template } from "forkvm";

const config = new pulumi.Config();
const runners = config.getNumber("runners") ?? 4;
const labels = config.get("labels") ?? "forkvm,linux,x64";

const parent = new ParentVm("runner", {
  memoryMiB: 256,
  init: [
    // The "toolchain": 32 MiB read once, so it sits in the page cache of every runner.
    "mkdir -p /opt/toolchain && dd if=/dev/zero of=/opt/toolchain/cache bs=1M count=32 2>/dev/null && cat /opt/toolchain/cache > /dev/null",
    // The job runner: logs the job (so a reset visibly wipes it) and runs it.
    `mkdir -p /var/log && printf '#!/bin/sh\\necho "$(date +%s) $*" >> /var/log/jobs\\nexec "$@"\\n' > /usr/bin/run-job && chmod +x /usr/bin/run-job`,
  ],
});

const template = new Template("runner-t", { parent, source: "frozen" });

const pool = new InstantClonePool("runners", {
  template,
  size: runners,
  persistent: false,
  // Each runner finds its registration data in /etc/forkvm/metadata.
  metadata: { RUNNER_NAME: "{name}", RUNNER_LABELS: labels, RUNNER_POOL: "{pool}" },
  // A new toolchain (a new template) replaces half the runners at a time.
  updatePolicy: { maxUnavailable: "50%" },
});

export const runnerNames = pool.children.apply((cs) => cs.map((c) => c.name));
export const estimate = pool.estimate.apply((e) => e.summary);
export const runAJob = pool.namePrefix.apply((p) => `npm run job -- ${p}-1 uname -a`);
