// Parses engine inputs with zod and turns the first issues into one INVALID_ARGUMENT error
// that names the field and what is allowed.
import type { z } from "zod";
import { ForkvmError } from "./errors";

export function parseArgs<S extends z.ZodType>(schema: S, input: unknown, what: string): z.infer<S> {
  const r = schema.safeParse(input);
  if (r.success) return r.data;
  const issues = r.error.issues.map((i) => `${i.path.join(".") || "(input)"}: ${i.message}`);
  const field = r.error.issues[0]?.path.join(".");
  throw new ForkvmError("INVALID_ARGUMENT", `Cannot ${what}: ${issues.join("; ")}`, { details: { field, issues } });
}
