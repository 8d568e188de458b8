import { test } from "uvu";
import * as assert from "uvu/assert";
import { execFileSync } from "node:child_process";
import { metadataEnv } from "../../engine/instance/metadata";

test("the env form of metadata survives any value when sourced by a shell", () => {
  const md = { ROLE: "runner", QUOTE: "it's $HOME `x` \"y\"", EMPTY: "", NL: "a\nb" };
  const out = execFileSync("sh", ["-c", `${metadataEnv(md)}\nprintf '%s|' "$ROLE" "$QUOTE" "$EMPTY" "$NL"`]).toString();
  assert.is(out, `runner|it's $HOME \`x\` "y"||a\nb|`);
});

test.run();
