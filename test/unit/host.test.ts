// The accelerator probe's BIOS must really run and exit (checked under TCG, which runs anywhere).
import { test } from "uvu";
import * as assert from "uvu/assert";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { spawnSync } from "node:child_process";
import { chooseAccel, probeBios, resolveMachine } from "../../engine/host";
import { deadline } from "../helpers/deadline";

test("the probe BIOS enters protected mode, loops and exits through isa-debug-exit", () => {
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "probe-")), "p.bin");
  fs.writeFileSync(file, probeBios(1000));
  const r = spawnSync("qemu-system-x86_64", ["-accel", "tcg", "-machine", "pc", "-nodefaults", "-display", "none", "-m", "16", "-bios", file, "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"], { timeout: 10_000 });
  assert.is(r.status, 1, String(r.stderr));
});

test("tcg and kvm are taken as asked; auto gives a reason", deadline(30_000, async () => {
  assert.is((await chooseAccel("tcg")).accel, "tcg");
  const auto = await chooseAccel("auto");
  assert.ok(auto.reason.length > 10);
  if (auto.accel === "tcg" && fs.existsSync("/dev/kvm")) assert.ok(auto.warning);
}));

test("the pc alias resolves to a versioned machine type", deadline(10_000, async () => {
  assert.match(await resolveMachine("pc"), /^pc-i440fx-\d+\.\d+$/);
}));

test.run();
