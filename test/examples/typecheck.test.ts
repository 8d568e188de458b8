// Every program type-checks against the SDK: the root program and the examples (examples/tsconfig.json
// maps "forkvm" to the sources), and each example with its own tsconfig as `pulumi up` compiles it.
import * as path from "node:path";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { deadline } from "../helpers/deadline";
import { ensureBuilt, ROOT } from "../provider/harness";
import { linkForkvm, run } from "./harness";

const test = suite("programs type-check");
const tsc = require.resolve("typescript/bin/tsc");

test.before(() => ensureBuilt());

test("the root program and the examples against the SDK sources", deadline(60_000, async () => {
  const r = await run(process.execPath, [tsc, "-p", "examples/tsconfig.json"], { cwd: ROOT });
  assert.is(r.code, 0, r.out + r.err);
}));

for (const name of ["ci-runners", "web-fleet"]) {
  test(`examples/${name} with its own tsconfig and node_modules/forkvm, as a user's project`, deadline(60_000, async () => {
    const dir = path.join(ROOT, "examples", name);
    linkForkvm(dir);
    const r = await run(process.execPath, [tsc, "-p", "tsconfig.json", "--noEmit"], { cwd: dir });
    assert.is(r.code, 0, r.out + r.err);
  }));
}

test.run();
