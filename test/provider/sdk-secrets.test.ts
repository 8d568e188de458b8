// The SDK under pulumi.runtime.setMocks (no provider runs): secrets given to ParentVm's `init` and
// InstantClonePool's `metadata` are listed by path in `__secrets` and their outputs stay secret
// even when the provider hands plain values back; `forkvm:home` config becomes `__home`.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import * as pulumi from "@pulumi/pulumi";
import { deadline } from "../helpers/deadline";
import { plain } from "./harness";

type Props = Record<string, any>;
const TOKEN = "s3cr3t-token";
const registered = new Map<string, Props>();


function valueOf<T>(o: pulumi.Output<T>): Promise<T> {
  return new Promise((resolve) => o.apply((v) => resolve(v)));
}

const test = suite("SDK secrets and home");

test.before(async () => {
  await pulumi.runtime.setMocks(
    {
      newResource: (args: { name: string; inputs: Props }) => {
        registered.set(args.name, args.inputs);
        const outs = plain(args.inputs) as Props;
        return { id: `${args.name}-id`, state: { ...outs, name: outs.name ?? `${args.name}-id`, home: outs.__home ?? "/default/home" } };
      },
      call: () => ({}),
    },
    "proj",
    "dev",
    false,
  );
});

test("a secret init command is listed by position; the init output is secret though the provider returned it plain", deadline(10_000, async () => {
  const { ParentVm } = await import("../../sdk");
  const p = new ParentVm("web", { memoryMiB: 160, init: ["echo warm > /tmp/state", pulumi.secret(`echo ${TOKEN} > /tmp/token`)] });
  await valueOf(p.id);
  const inputs = registered.get("web")!;
  assert.equal(inputs.__secrets, [["init", 1]]);
  assert.is(await pulumi.isSecret(p.init), true);
  assert.equal(await valueOf(p.init), ["echo warm > /tmp/state", `echo ${TOKEN} > /tmp/token`]);
  assert.is(await pulumi.isSecret(p.memoryMiB), false);
  assert.is(await pulumi.isSecret(p.name), false);
  assert.is(inputs.__home, undefined, "no forkvm:home config, no __home");
}));

test("no secret: __secrets is empty and nothing is secret", deadline(10_000, async () => {
  const { ParentVm } = await import("../../sdk");
  const p = new ParentVm("plain", { init: ["true"] });
  await valueOf(p.id);
  assert.equal(registered.get("plain")!.__secrets, []);
  assert.is(await pulumi.isSecret(p.init), false);
}));

test("a whole secret list, a secret metadata value and a secret metadata map", deadline(10_000, async () => {
  const { InstantClonePool, ParentVm } = await import("../../sdk");
  const whole = new ParentVm("whole", { init: pulumi.secret(["a", "b"]) });
  const pool = new InstantClonePool("pool", { template: "t", size: 1, metadata: { ROLE: "web", TOKEN: pulumi.secret(TOKEN) } });
  const map = new InstantClonePool("map", { template: "t", size: 1, metadata: pulumi.secret({ TOKEN }) });
  await Promise.all([valueOf(whole.id), valueOf(pool.id), valueOf(map.id)]);
  assert.equal(registered.get("whole")!.__secrets, [["init"]]);
  assert.equal(registered.get("pool")!.__secrets, [["metadata", "TOKEN"]]);
  assert.equal(registered.get("map")!.__secrets, [["metadata"]]);
  assert.is(await pulumi.isSecret(whole.init), true);
  assert.is(await pulumi.isSecret(pool.metadata), true);
  assert.is(await pulumi.isSecret(pool.size), false);
}));

test("forkvm:home config reaches the provider as __home and comes back as the home output", deadline(10_000, async () => {
  require("@pulumi/pulumi/runtime/config").setAllConfig({ "forkvm:home": "/srv/forkvm" }, []);
  try {
    const { ParentVm, Template } = await import("../../sdk");
    const p = new ParentVm("configured", {});
    const t = new Template("configured-t", { parent: p });
    await Promise.all([valueOf(p.id), valueOf(t.id)]);
    assert.is(registered.get("configured")!.__home, "/srv/forkvm");
    assert.is(registered.get("configured-t")!.__home, "/srv/forkvm");
    assert.is(await valueOf(p.home), "/srv/forkvm");
  } finally {
    require("@pulumi/pulumi/runtime/config").setAllConfig({}, []);
  }
}));

test.run();
