// The guest agent decodes hostnames from base64 with shell builtins only (no fork under TCG):
// the function, cut out of agent.sh, run by the same busybox sh the guest uses, for every length.
import { test } from "uvu";
import * as assert from "uvu/assert";
import * as fs from "node:fs";
import * as path from "node:path";
import { execFileSync } from "node:child_process";

const agent = fs.readFileSync(path.join(__dirname, "..", "..", "engine", "guest", "agent.sh"), "utf8");
const fn = agent.slice(agent.indexOf("B64ALPHABET="), agent.indexOf("\n}\n", agent.indexOf("b64text()")) + 3);

function decode(b64: string): string {
  return execFileSync("busybox", ["sh", "-c", `${fn}\nb64text "$1"\nprintf "$b64esc"`, "sh", b64], { encoding: "latin1" });
}

test("b64text is found in agent.sh", () => {
  assert.ok(fn.startsWith("B64ALPHABET=") && fn.includes("b64text()"), fn.slice(0, 80));
});

test("hostnames of every length and padding decode exactly", () => {
  const names = ["a", "ab", "abc", "c-1", "child-42", "web-fleet-a1b2-17", "x".repeat(63), "A.b-C.d9"];
  for (const n of names) assert.is(decode(Buffer.from(n).toString("base64")), n, n);
});

test("any byte survives, including % and backslash (every byte becomes an octal escape)", () => {
  const s = "100%\\n-\x01\xff";
  assert.is(decode(Buffer.from(s, "latin1").toString("base64")), s);
});

test("exec arguments decode through eval $'...' exactly: quotes, $, newlines, trailing newline", () => {
  const words = [`it's "quoted" $HOME \\ \`x\``, "two\nlines\n\n", "-", "é ü", " lead and trail "];
  for (const w of words) {
    const out = execFileSync("busybox", ["sh", "-c", `${fn}\nb64text "$1"\neval "v=\\$'$b64esc'"\nprintf %s "$v"`, "sh", Buffer.from(w).toString("base64")], { encoding: "utf8" });
    assert.is(out, w, JSON.stringify(w));
  }
});

test.run();
