// Image parts that test/image.test.ts does not reach alone: modules.dep parsing, and the
// catalogue's inputs key (an image is reused only when built from the same inputs and intact).
import { test } from "uvu";
import * as assert from "uvu/assert";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { ForkvmError } from "../../engine/errors";
import { type ImageInputs, type ImageManifest, upToDateImage } from "../../engine/image/catalogue";
import { parseModulesDep } from "../../engine/image/modules";
import { sha256, sha256File } from "../../engine/util/hash";
import { deadline } from "../helpers/deadline";

test("modules.dep parses into each module's dependencies, skipping blanks and comments", deadline(2000, async () => {
  const deps = parseModulesDep("# generated\n\nkernel/a.ko: kernel/b.ko  kernel/c.ko\n  kernel/b.ko:\nkernel/c.ko:kernel/b.ko\n");
  assert.equal([...deps.entries()], [["kernel/a.ko", ["kernel/b.ko", "kernel/c.ko"]], ["kernel/b.ko", []], ["kernel/c.ko", ["kernel/b.ko"]]]);
}));

test("a modules.dep line without a colon is an IMAGE error quoting the line", deadline(2000, async () => {
  const err = (() => { try { parseModulesDep("kernel/a.ko: kernel/b.ko\nkernel/b.ko kernel/c.ko\n"); } catch (e) { return e; } })() as ForkvmError;
  assert.instance(err, ForkvmError);
  assert.is(err.code, "IMAGE");
  assert.is(err.message, `Cannot parse modules.dep: no ':' in line "kernel/b.ko kernel/c.ko"`);
}));

test("a file's streamed sha256 equals the sha256 of its bytes", deadline(5000, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "hash-"));
  const data = Buffer.alloc(3 * 1024 * 1024 + 17, 7); // several stream chunks
  fs.writeFileSync(path.join(dir, "f"), data);
  assert.is(await sha256File(path.join(dir, "f")), sha256(data));
  assert.is(sha256("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  fs.rmSync(dir, { recursive: true, force: true });
}));

const INPUTS: ImageInputs = {
  builder: 2, kernelPackage: "linux-image-6.1.0-50-amd64", kernelPackageVersion: "6.1.176-1", busyboxVersion: "1:1.35.0-4",
  scriptsSha256: "0".repeat(64), modules: ["ext4"], cmdline: "console=ttyS0", minMemoryMiB: 128,
};

/** A built-looking image directory: two files and a manifest recording their sums and INPUTS. */
function fakeImage(dir: string): void {
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, "vmlinuz"), "kernel");
  fs.writeFileSync(path.join(dir, "initrd.img"), "initrd");
  const m: ImageManifest = {
    version: 1, name: "default", kernel: "vmlinuz", initrd: "initrd.img", cmdline: INPUTS.cmdline, kernelVersion: "6.1.0-50-amd64",
    minMemoryMiB: 128, sha256: "1".repeat(64), files: { vmlinuz: sha256("kernel"), "initrd.img": sha256("initrd") }, modules: [], inputs: INPUTS,
  };
  fs.writeFileSync(path.join(dir, "image.json"), JSON.stringify(m));
}

test("an image is reused only when built from the same inputs and its files are intact", deadline(5000, async () => {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), "imgkey-"));
  const dir = path.join(base, "images/default");
  assert.is(await upToDateImage(dir, "default", INPUTS), undefined, "nothing built");
  fakeImage(dir);
  const img = await upToDateImage(dir, "default", INPUTS);
  assert.is(img?.kernel, path.join(dir, "vmlinuz"));
  assert.is(img?.initrd, path.join(dir, "initrd.img"));
  assert.is(await upToDateImage(dir, "default", { ...INPUTS, kernelPackageVersion: "6.1.177-1" }), undefined, "another kernel");
  assert.is(await upToDateImage(dir, "default", { ...INPUTS, modules: ["ext4", "virtio_net"] }), undefined, "other modules");
  fs.writeFileSync(path.join(dir, "initrd.img"), "changed");
  assert.is(await upToDateImage(dir, "default", INPUTS), undefined, "a file that no longer matches its sum");
  fs.rmSync(path.join(dir, "initrd.img"));
  assert.is(await upToDateImage(dir, "default", INPUTS), undefined, "a missing file");
  fs.writeFileSync(path.join(dir, "image.json"), "{ not json");
  assert.is(await upToDateImage(dir, "default", INPUTS), undefined, "an unreadable manifest");
  fs.rmSync(base, { recursive: true, force: true });
}));

test.run();
