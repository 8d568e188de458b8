// The one error type of the engine: a stable `code`, a message that reads
// "Cannot <verb> <object>: <cause>", the underlying cause and structured details.

export type ForkvmErrorCode =
  | "INVALID_ARGUMENT" // an input failed validation; details.field names it
  | "NOT_FOUND" // no such VM, template or image
  | "ALREADY_EXISTS" // the name is taken
  | "CONFLICT" // the object is in a state that forbids the operation
  | "HAS_CHILDREN" // a template still has children
  | "HOST" // the host lacks something (QEMU, tmpfs, memory, packages)
  | "QEMU" // QEMU failed; details.stderr holds its last lines
  | "QMP" // a QMP command failed or the monitor went away
  | "MIGRATION" // saving or loading a checkpoint failed
  | "AGENT" // the guest agent did not answer or reported an error
  | "TIMEOUT" // a deadline passed
  | "STATE" // a manifest on disk is unreadable or invalid
  | "IMAGE"; // building or loading a guest image failed

export class ForkvmError extends Error {
  readonly code: ForkvmErrorCode;
  readonly details: Record<string, unknown>;
  override readonly cause?: unknown;

  constructor(code: ForkvmErrorCode, message: string, opts: { cause?: unknown; details?: Record<string, unknown> } = {}) {
    super(message);
    this.name = "ForkvmError";
    this.code = code;
    this.cause = opts.cause;
    this.details = opts.details ?? {};
  }
}

/** The message of anything thrown, for use as the "<cause>" part of a message. */
export function messageOf(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}

/** Wraps any error as "Cannot <what>: <cause>", keeping a ForkvmError's code. */
export function wrap(err: unknown, what: string, fallback: ForkvmErrorCode = "HOST"): ForkvmError {
  const code = err instanceof ForkvmError ? err.code : fallback;
  const details = err instanceof ForkvmError ? err.details : {};
  return new ForkvmError(code, `Cannot ${what}: ${messageOf(err)}`, { cause: err, details });
}
