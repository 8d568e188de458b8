// From a program to Pulumi's own dynamic-provider host, as the CLI drives it: the program runs
// under setMocks with `forkvm:home` set and secret init commands; its registrations (serialised
// provider included, secrets unwrapped as the engine hands them to a dynamic provider) go to the
// host, whose FORKVM_HOME points elsewhere. (a) Preview's and up's Check give the same generated
// names, a replacement the next one; (b) the configured home is used and recorded, and Read, Diff
// and Delete use it; (c) a failing secret init command leaves no trace in the error, the log lines
// or the host's output. Two small TCG boots.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import * as pulumi from "@pulumi/pulumi";
import { Engine, loadImage } from "../../engine";
import { HostError, LogSink, ProviderHost } from "../../deploy/provider-host";
import { deadline } from "../helpers/deadline";
import { ensureBuilt, plain, qemuOfThisSuite, removeAll, ROOT, secs } from "./harness";

type Props = Record<string, any>;
const TOKEN = "s3cr3t-token";
const test = suite("home and secrets through the dynamic-provider host");
const timings: Record<string, number> = {};

const scratch = fs.mkdtempSync(path.join(process.env.FORKVM_TEST_HOME ?? os.tmpdir(), "seams-"));
const homeA = path.join(scratch, "a"); // forkvm:home
const homeB = path.join(scratch, "b"); // the host's FORKVM_HOME
const registered = new Map<string, { urn: string; inputs: Props }>();
let sink: LogSink;
let host: ProviderHost;
const state: Record<string, { id: string; inputs: Props; outs: Props }> = {};


function news(name: string, extra: Props = {}): { urn: string; news: Props } {
  const r = registered.get(name)!;
  return { urn: r.urn, news: { ...(plain(r.inputs) as Props), ...extra } };
}

/** Everything the user could see: log lines on the resource rows, and what the host printed. */
function seen(): string {
  return [...sink.entries.map((e) => e.message), ...host.output].join("\n");
}

async function checkOk(urn: string, olds: Props, inputs: Props): Promise<Props> {
  const r = await host.check(urn, olds, inputs);
  assert.equal(r.failures, [], JSON.stringify(r.failures));
  return r.inputs;
}

test.before(async () => {
  ensureBuilt();
  const image = await loadImage().catch(() => undefined);
  const memoryMiB = Math.max(128, image?.minMemoryMiB ?? 128);
  await pulumi.runtime.setMocks(
    {
      newResource: (args: { type: string; name: string; inputs: Props }) => {
        registered.set(args.name, { urn: args.inputs.__urn, inputs: args.inputs });
        return { id: `${args.name}-mock`, state: { ...(plain(args.inputs) as Props), name: `${args.name}-mock` } };
      },
      call: () => ({}),
    },
    "forkvm",
    "test",
    false,
  );
  require("@pulumi/pulumi/runtime/config").setAllConfig({ "forkvm:home": homeA }, []);
  const { ParentVm, Template } = await import("../../sdk");
  const web = new ParentVm("web", { memoryMiB, accel: "tcg", diskMiB: 0, init: ["echo warm > /tmp/state", pulumi.secret(`echo ${TOKEN} > /tmp/token`)] });
  const bad = new ParentVm("bad", { memoryMiB, accel: "tcg", diskMiB: 0, init: ["true", pulumi.secret(`echo "auth with ${TOKEN} failed" >&2; exit 3 # ${TOKEN}`)] });
  const t = new Template("web-t", { parent: web, source: "running" });
  await Promise.all([web.id, bad.id, t.id].map((o) => new Promise((resolve) => o.apply(resolve))));
  sink = await LogSink.start();
  host = await ProviderHost.start({ cwd: ROOT, project: "forkvm", engineAddress: sink.address, env: { FORKVM_HOME: homeB } });
});

test.after(async () => {
  await host?.stop();
  await sink?.stop();
  await removeAll(new Engine({ home: homeA }));
  await removeAll(new Engine({ home: homeB }));
  fs.rmSync(scratch, { recursive: true, force: true });
  console.log(`\nseams timings (s): ${JSON.stringify(timings)}`);
});

test("the program's registrations carry forkvm:home and the paths of the secrets", () => {
  assert.is(registered.get("web")!.inputs.__home, homeA);
  assert.equal(registered.get("web")!.inputs.__secrets, [["init", 1]]);
  assert.equal(registered.get("bad")!.inputs.__secrets, [["init", 1]]);
  assert.ok(typeof registered.get("web")!.inputs.__provider === "string", "the serialised provider is among the inputs");
});

test("preview's and up's Check give the same generated names", deadline(30_000, async () => {
  const web = news("web");
  const preview = await checkOk(web.urn, {}, web.news);
  const up = await checkOk(web.urn, {}, web.news);
  assert.match(preview.name, /^web-[0-9a-f]{4}$/);
  assert.is(up.name, preview.name);
  assert.is(up.__home, homeA, "check placed the parent in forkvm:home");
  const t = news("web-t", { parent: preview.name });
  const tPreview = await checkOk(t.urn, {}, t.news);
  assert.is((await checkOk(t.urn, {}, t.news)).name, tPreview.name);
  state.web = { id: "", inputs: up, outs: {} };
}));

test("Create boots the parent in forkvm:home and records it; the host's FORKVM_HOME stays empty", deadline(150_000, async () => {
  const t0 = Date.now();
  const { id, outs } = await host.create(news("web").urn, state.web.inputs);
  timings.createParent = secs(t0);
  assert.is(id, state.web.inputs.name);
  assert.is(outs.home, homeA);
  assert.is(new Engine({ home: homeA }).findVm(id)?.status, "running");
  assert.equal(new Engine({ home: homeB }).listVms(), []);
  assert.is((await new Engine({ home: homeA }).exec(id, ["cat", "/tmp/token"])).stdout.toString().trim(), TOKEN, "the secret command ran");
  assert.not.match(seen(), TOKEN);
  state.web = { id, inputs: state.web.inputs, outs };
}));

test("Read, Diff and a second Check use the recorded home; a replacement gets the next name, the same each time", deadline(30_000, async () => {
  const { urn } = news("web");
  const { id, inputs, outs } = state.web;
  const r = await host.read(urn, id, outs);
  assert.is(r.id, id);
  assert.is(r.props.status, "running");
  const d = await host.diff(urn, id, outs, inputs);
  assert.is(d.changes, "none", "a diff in FORKVM_HOME would find no parent and want to heal it");
  const again = await checkOk(urn, inputs, news("web").news);
  assert.is(again.name, id);
  const bigger = news("web", { memoryMiB: inputs.memoryMiB + 32 }).news;
  const replacement = await checkOk(urn, {}, bigger);
  assert.is.not(replacement.name, id);
  assert.is((await checkOk(urn, {}, bigger)).name, replacement.name);
}));

test("Delete removes the parent from the recorded home", deadline(60_000, async () => {
  const { urn } = news("web");
  await host.delete(urn, state.web.id, state.web.outs);
  assert.is(new Engine({ home: homeA }).findVm(state.web.id), undefined);
  assert.not.match(seen(), TOKEN);
}));

test("a secret init command that fails: the error, the log lines and the host's output never show it", deadline(150_000, async () => {
  const bad = news("bad");
  const inputs = await checkOk(bad.urn, {}, bad.news);
  const t0 = Date.now();
  let err: HostError | undefined;
  try {
    await host.create(bad.urn, inputs);
  } catch (e) {
    err = e as HostError;
  }
  timings.failedParent = secs(t0);
  assert.ok(err, "create failed");
  assert.match(err!.message, /init command 2/);
  assert.match(err!.message, /exit 3/);
  assert.not.match(err!.message, TOKEN);
  assert.not.match(err!.message, "auth with");
  const all = seen();
  assert.not.match(all, TOKEN);
  assert.equal(new Engine({ home: homeA }).listVms(), [], "the failed parent left nothing");
  assert.equal(qemuOfThisSuite(), []);
}));

test.run();
