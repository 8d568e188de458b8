// Parses engine inputs with zod and turns the issues into one INVALID_ARGUMENT error
// that names the field (an unknown key is named too) and what is allowed.
import type { z } from "zod";
import { ForkvmError } from "./errors";

function fieldOf(issue: z.core.$ZodIssue): string {
  const keys = issue.code === "unrecognized_keys" ? [issue.keys[0]] : [];
  return [...issue.path.map(String), ...keys].join(".") || "(input)";
}

export function parseArgs<S extends z.ZodType>(schema: S, input: unknown, what: string): z.infer<S> {
  const r = schema.safeParse(input);
  if (r.success) return r.data;
  const allowed = "shape" in schema ? Object.keys((schema as unknown as z.ZodObject).shape).join(", ") : undefined;
  const issues = r.error.issues.map((i) => (i.code === "unrecognized_keys" ? `${fieldOf(i)}: unknown field${allowed ? ` (allowed: ${allowed})` : ""}` : `${fieldOf(i)}: ${i.message}`));
  throw new ForkvmError("INVALID_ARGUMENT", `Cannot ${what}: ${issues.join("; ")}`, { details: { field: fieldOf(r.error.issues[0]), issues } });
}
