// The one place forkvm takes a sha256: of bytes in memory, or of a file read as a stream (a 70 MB
// kernel or a memory-sized checkpoint is never held in memory whole just to hash it).
import { createHash } from "node:crypto";
import * as fs from "node:fs";

/** The sha256 of `data` (a string is hashed as UTF-8), as 64 lowercase hex digits. */
export function sha256(data: Buffer | string): string {
  return createHash("sha256").update(data).digest("hex");
}

/** The sha256 of the file's content, read in chunks. Rejects with the fs error (e.g. ENOENT). */
export async function sha256File(file: string): Promise<string> {
  const h = createHash("sha256");
  for await (const chunk of fs.createReadStream(file)) h.update(chunk as Buffer);
  return h.digest("hex");
}
