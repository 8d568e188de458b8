// The one splitter of a byte stream into newline-terminated lines, bounded and linear: bytes are
// kept as the chunks they came in and joined once per line; a line past the cap is dropped as it
// streams (never buffered) and reported once. Used for the guest agent channel and for QMP.

export interface LineFramerOptions {
  /** Most bytes a line may hold (its newline not counted). */
  maxLineBytes: number;
  /** Called with each complete line, without its newline. */
  onLine: (line: Buffer) => void;
  /**
   * Called once per line that passes `maxLineBytes`, as soon as it does, with its first
   * `headBytes` bytes; the rest of that line, up to its newline, is discarded.
   */
  onOverflow?: (head: Buffer) => void;
  /** Bytes of an overlong line handed to `onOverflow` (default 64). */
  headBytes?: number;
}

export class LineFramer {
  private chunks: Buffer[] = [];
  private size = 0;
  private skipping = false;
  private readonly headBytes: number;

  constructor(private readonly o: LineFramerOptions) {
    this.headBytes = o.headBytes ?? 64;
  }

  /** Bytes held of the current, unfinished line (never more than maxLineBytes). */
  get buffered(): number {
    return this.size;
  }

  /**
   * Feeds bytes. Callbacks run synchronously, in stream order; an exception from one propagates
   * to the caller of push, with the framer left consistent (at the next line).
   */
  push(b: Buffer): void {
    let start = 0;
    while (start < b.length) {
      const nl = b.indexOf(10, start);
      const end = nl < 0 ? b.length : nl;
      if (!this.skipping && end > start) {
        if (this.size + (end - start) > this.o.maxLineBytes) {
          const head = this.head(b.subarray(start, end));
          this.chunks = [];
          this.size = 0;
          this.skipping = true;
          this.o.onOverflow?.(head);
        } else {
          this.chunks.push(b.subarray(start, end));
          this.size += end - start;
        }
      }
      if (nl < 0) return;
      start = nl + 1;
      if (this.skipping) {
        this.skipping = false;
        continue;
      }
      const line = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks, this.size);
      this.chunks = [];
      this.size = 0;
      this.o.onLine(line);
    }
  }

  /** Forgets the unfinished line. */
  reset(): void {
    this.chunks = [];
    this.size = 0;
    this.skipping = false;
  }

  private head(tail: Buffer): Buffer {
    const parts: Buffer[] = [];
    let n = 0;
    for (const c of [...this.chunks, tail]) {
      if (n >= this.headBytes) break;
      const take = c.subarray(0, this.headBytes - n);
      parts.push(take);
      n += take.length;
    }
    return Buffer.from(Buffer.concat(parts, n)); // a copy: never pins a large chunk
  }
}
