// Where progress goes: the engine address the CLI gives the dynamic-provider host, Log calls on
// the resource's URN (status lines coalesced, a lasting message never overtaken by an older status).
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { deadline } from "../helpers/deadline";
import { LogSink } from "../../deploy/provider-host";
import { engineAddress, labelOf, reporter } from "../../provider/report";

const test = suite("report");

test("the engine address is the first host:port after the dynamic-provider script, flags skipped", () => {
  const script = "/p/node_modules/@pulumi/pulumi/cmd/dynamic-provider/index.js";
  assert.is(engineAddress(["node", script, "127.0.0.1:4321"], {}), "127.0.0.1:4321");
  assert.is(engineAddress(["node", script, "-v=9", "--logtostderr", "127.0.0.1:4321"], {}), "127.0.0.1:4321");
  assert.is(engineAddress(["node", "/app/main.js", "127.0.0.1:4321"], {}), undefined);
  assert.is(engineAddress(["node", "x"], { FORKVM_PULUMI_ENGINE: "127.0.0.1:1" }), "127.0.0.1:1");
});

test("labels come from the URN's type and name", () => {
  assert.is(labelOf("urn:pulumi:dev::proj::pulumi-nodejs:dynamic/forkvm:InstantClonePool::web", "x"), "InstantClonePool web");
  assert.is(labelOf(undefined, "web-1a2b"), "web-1a2b");
});

test("status lines are coalesced and a lasting message comes after the status before it", deadline(10_000, async () => {
  const sink = await LogSink.start();
  process.env.FORKVM_PULUMI_ENGINE = sink.address;
  const urn = "urn:pulumi:dev::proj::pulumi-nodejs:dynamic/forkvm:InstantClonePool::web";
  const lines: string[] = [];
  const r = reporter(urn, "pool web", (l) => lines.push(l));
  for (let i = 1; i <= 50; i++) r.status(`forked ${i}/50`);
  r.info("50/50 children ready");
  r.warn("careful");
  await r.flush();
  await sink.stop();
  const got = sink.entries.map((e) => `${e.ephemeral ? "status" : e.severity} ${e.message}`);
  assert.ok(got.length <= 4, `50 status lines were coalesced: ${got.join("; ")}`);
  assert.equal(got.slice(-3), ["status forked 50/50", "info 50/50 children ready", "warning careful"]);
  assert.ok(sink.entries.every((e) => e.urn === urn));
  assert.equal(lines, [], "nothing went to stderr while the engine answered");
}));

test.run();
