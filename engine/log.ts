// Logging is passed in: the engine never writes to the console itself.
// A Logger carries fields (e.g. the VM name) that child loggers add to.

export type LogLevel = "debug" | "info" | "warn" | "error";

export interface Logger {
  log(level: LogLevel, msg: string, fields?: Record<string, unknown>): void;
  child(fields: Record<string, unknown>): Logger;
}

export type LogSink = (level: LogLevel, msg: string, fields: Record<string, unknown>) => void;

/** A logger that sends every record, with its accumulated fields, to `sink`. */
export function makeLogger(sink: LogSink, fields: Record<string, unknown> = {}): Logger {
  return {
    log: (level, msg, extra) => sink(level, msg, { ...fields, ...extra }),
    child: (more) => makeLogger(sink, { ...fields, ...more }),
  };
}

/** A logger that drops everything. */
export const silentLogger: Logger = makeLogger(() => {});
