// An undo list for multi-step operations: each step that makes something pushes how to
// unmake it; on failure the list runs in reverse, so a failed create leaves nothing behind.
import type { Logger } from "./log";
import { messageOf } from "./errors";

export class Undo {
  private steps: Array<{ what: string; fn: () => unknown }> = [];

  constructor(private readonly log?: Logger) {}

  push(what: string, fn: () => unknown): void {
    this.steps.push({ what, fn });
  }

  /** Forgets every step: the operation succeeded. */
  commit(): void {
    this.steps = [];
  }

  /** Runs every step in reverse; a failing step is logged and does not stop the others. */
  async run(): Promise<void> {
    for (const step of this.steps.reverse()) {
      try {
        await step.fn();
      } catch (err) {
        this.log?.log("warn", `undo step failed: ${step.what}: ${messageOf(err)}`);
      }
    }
    this.steps = [];
  }
}
