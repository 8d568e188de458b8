// What every engine operation receives: the store, a logger, and a progress callback.
import type { Logger } from "./log";
import type { Store } from "./state/store";

export interface Progress {
  /** A short step name, e.g. "boot", "init", "fork". */
  step: string;
  message?: string;
  done?: number;
  total?: number;
}

export interface Ctx {
  store: Store;
  log: Logger;
  progress?: (p: Progress) => void;
}
