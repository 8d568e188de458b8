// docs/resources.md is generated from the schemas: it must be up to date (`npm run docs`).
import * as fs from "node:fs";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { DOCS_FILE, render } from "../../schema/docs";

const test = suite("resource reference");

test("docs/resources.md matches the schemas (run `npm run docs` after changing one)", () => {
  assert.ok(fs.readFileSync(DOCS_FILE, "utf8") === render(), "docs/resources.md is out of date: run `npm run docs`");
});

test("every input of every resource is documented with a description", () => {
  const inputRows = render().split("\n").filter((l) => /^\| `[a-zA-Z]+` \|/.test(l) && l.split(" | ").length === 5);
  assert.ok(inputRows.length >= 30, `only ${inputRows.length} input rows`);
  for (const row of inputRows) assert.ok(!/\|\s*\|$/.test(row), `input without a description: ${row}`);
});

test.run();
