// Kernel formats: the compressed payload of an x86 bzImage, the Xen PVH entry note of an ELF
// kernel, and the uncompressed vmlinux QEMU boots directly through that entry.
import { gunzipSync } from "node:zlib";
import { messageOf } from "../errors";
import type { Logger } from "../log";
import { runBytes } from "../util/run";

/**
 * The kernel as an uncompressed ELF when it can boot directly through its PVH entry (QEMU
 * `-kernel vmlinux`): under TCG this halves boot time, which was mostly the guest
 * decompressing its own xz payload. Undefined (boot the bzImage) when the payload is not
 * xz or gzip, `xz` is missing or fails, or the ELF has no PVH entry (each logged as a warning).
 * Throws only zlib's error for a corrupt gzip payload.
 */
export async function directBootKernel(bzImage: Buffer, log: Logger): Promise<Buffer | undefined> {
  const payload = bzImagePayload(bzImage);
  if (!payload) {
    log.log("warn", "the kernel is not a bzImage with a payload; booting it as it is");
    return undefined;
  }
  let elf: Buffer;
  if (payload.subarray(0, 6).equals(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]))) {
    try {
      // The payload ends with the kernel's 4-byte size: read only the first stream.
      elf = await runBytes("xz", ["-dc", "--single-stream"], { what: "decompress the kernel", code: "IMAGE", input: payload, timeoutMs: 120_000 });
    } catch (err) {
      log.log("warn", "cannot decompress the kernel for direct boot; booting the bzImage", { error: messageOf(err) });
      return undefined;
    }
  } else if (payload[0] === 0x1f && payload[1] === 0x8b) {
    elf = gunzipSync(payload);
  } else {
    log.log("warn", "the kernel payload is neither xz nor gzip; booting the bzImage");
    return undefined;
  }
  if (!hasPvhEntry(elf)) {
    log.log("warn", "the kernel has no PVH entry; booting the bzImage");
    return undefined;
  }
  return elf;
}

/** The compressed payload of a bzImage (boot protocol >= 2.08), or undefined. */
export function bzImagePayload(bz: Buffer): Buffer | undefined {
  if (bz.length < 0x250 || bz.toString("latin1", 0x202, 0x206) !== "HdrS" || bz.readUInt16LE(0x206) < 0x208) return undefined;
  const setupSects = bz[0x1f1] || 4;
  const start = (setupSects + 1) * 512 + bz.readUInt32LE(0x248);
  const end = start + bz.readUInt32LE(0x24c);
  return end <= bz.length ? bz.subarray(start, end) : undefined;
}

/** True when a little-endian ELF64 carries the Xen PVH entry note (owner "Xen", type 18). */
export function hasPvhEntry(elf: Buffer): boolean {
  if (elf.length < 64 || elf.readUInt32BE(0) !== 0x7f454c46 || elf[4] !== 2 || elf[5] !== 1) return false;
  const phoff = Number(elf.readBigUInt64LE(0x20));
  const phentsize = elf.readUInt16LE(0x36);
  const phnum = elf.readUInt16LE(0x38);
  for (let i = 0; i < phnum; i++) {
    const ph = phoff + i * phentsize;
    if (ph + 0x28 > elf.length || elf.readUInt32LE(ph) !== 4 /* PT_NOTE */) continue;
    let off = Number(elf.readBigUInt64LE(ph + 8));
    const end = Math.min(elf.length, off + Number(elf.readBigUInt64LE(ph + 0x20)));
    while (off + 12 <= end) {
      const namesz = elf.readUInt32LE(off);
      const descsz = elf.readUInt32LE(off + 4);
      const type = elf.readUInt32LE(off + 8);
      const name = elf.toString("latin1", off + 12, off + 12 + namesz).replace(/\0+$/, "");
      if (name === "Xen" && type === 18) return true;
      off += 12 + Math.ceil(namesz / 4) * 4 + Math.ceil(descsz / 4) * 4;
    }
  }
  return false;
}

