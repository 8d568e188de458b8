// Generates docs/resources.md, the resource reference, from the schemas (`npm run docs`).
// A test fails when the file is out of date with the schemas.
import * as fs from "node:fs";
import * as path from "node:path";
import { z } from "zod";
import { PARENT_REPLACE_KEYS, ParentVmInputs, ParentVmOutputs } from "./parent-vm";
import { TEMPLATE_REPLACE_KEYS, TemplateInputs, TemplateOutputs } from "./template";
import { InstantClonePoolInputs, InstantClonePoolOutputs } from "./instant-clone-pool";

type Js = Record<string, any>;

const MAX_SAFE = Number.MAX_SAFE_INTEGER;

function typeOf(js: Js): string {
  if (js.anyOf) return js.anyOf.map(typeOf).join(" \\| ");
  if (js.enum) return js.enum.map((v: unknown) => `\`${JSON.stringify(v)}\``).join(" \\| ");
  if (js.const !== undefined) return `\`${JSON.stringify(js.const)}\``;
  switch (js.type) {
    case "integer":
    case "number": {
      const lo = js.minimum ?? (js.exclusiveMinimum !== undefined ? `>${js.exclusiveMinimum}` : undefined);
      const hi = js.maximum !== undefined && Math.abs(js.maximum) < MAX_SAFE ? js.maximum : undefined;
      const range = lo !== undefined && lo > -MAX_SAFE ? (hi !== undefined ? ` ${lo}–${hi}` : ` ≥ ${lo}`) : hi !== undefined ? ` ≤ ${hi}` : "";
      return `${js.type}${range}`;
    }
    case "string":
      return "string";
    case "boolean":
      return "boolean";
    case "array":
      return `${js.items?.type === "object" && js.items.properties ? "object" : typeOf(js.items ?? {})}[]`;
    case "object":
      return js.properties ? "object" : `map of ${typeOf(js.additionalProperties ?? {})}`;
    default:
      return "any";
  }
}

function cell(s: unknown): string {
  return String(s ?? "").replace(/\|/g, "\\|").replace(/\n/g, " ");
}

interface Row {
  name: string;
  type: string;
  required: boolean;
  def?: unknown;
  description: string;
}

/** Flattens properties (nested objects and arrays of objects as a.b and a[].b rows); "__" keys are the SDK's own. */
function rows(js: Js, prefix = ""): Row[] {
  const out: Row[] = [];
  const required = new Set<string>(js.required ?? []);
  for (const [key, prop] of Object.entries<Js>(js.properties ?? {})) {
    if (key.startsWith("__")) continue;
    const name = `${prefix}${key}`;
    out.push({ name, type: typeOf(prop), required: required.has(key) && prop.default === undefined, def: prop.default, description: prop.description ?? "" });
    if (prop.type === "object" && prop.properties) out.push(...rows(prop, `${name}.`));
    if (prop.type === "array" && prop.items?.type === "object" && prop.items.properties) out.push(...rows(prop.items, `${name}[].`));
  }
  return out;
}

function inputTable(schema: z.ZodType, onChange: (key: string) => string): string {
  const js = z.toJSONSchema(schema, { io: "input", unrepresentable: "any" }) as Js;
  const lines = ["| input | type | default | on change | description |", "|---|---|---|---|---|"];
  for (const r of rows(js)) {
    const top = r.name.split(/[.[]/)[0];
    const def = r.required ? "**required**" : r.def === undefined ? "" : `\`${JSON.stringify(r.def)}\``;
    lines.push(`| \`${r.name}\` | ${r.type} | ${def} | ${r.name === top ? onChange(top) : ""} | ${cell(r.description)} |`);
  }
  return lines.join("\n");
}

function outputTable(schema: z.ZodType, inputs: z.ZodType): string {
  const js = z.toJSONSchema(schema, { io: "output", unrepresentable: "any" }) as Js;
  const inputKeys = new Set(Object.keys((z.toJSONSchema(inputs, { io: "input", unrepresentable: "any" }) as Js).properties ?? {}));
  const lines = ["| output | type | description |", "|---|---|---|"];
  for (const r of rows(js)) {
    const top = r.name.split(/[.[]/)[0];
    if (inputKeys.has(top) && r.name === top && !/id\.|id;|resource's id/.test(r.description)) continue;
    if (inputKeys.has(top) && r.name !== top) continue;
    lines.push(`| \`${r.name}\` | ${r.type} | ${cell(r.description)} |`);
  }
  return lines.join("\n");
}

const replaceOrUpdate = (replace: readonly string[]) => (key: string) => (replace.includes(key) ? "replace" : "in place");

export function render(): string {
  const poolChange = (key: string) =>
    ({ name: "replace", namePrefix: "replace", template: "rolling update", persistent: "rolling update", macPrefix: "rolling update", forwards: "rolling update", size: "add/remove children", metadata: "rewritten in place" })[key] ?? "in place";
  return `<!-- Generated from schema/*.ts by \`npm run docs\`; do not edit by hand. -->
# Resource reference

\`import { ParentVm, Template, InstantClonePool } from "forkvm"\`. Every resource is a Pulumi dynamic
resource; its \`id\` is the engine's name for it, so \`forkvm ls\`, \`forkvm exec <name>\` and the
other CLI commands work on what a program created. The state directory is the stack's
\`forkvm:home\` config (\`pulumi config set forkvm:home /srv/forkvm\`), else \`FORKVM_HOME\`, else
\`~/.local/state/forkvm\` of the user running \`pulumi\`. Each resource records it as the output
\`home\`, and refresh, update and destroy use that home; changing \`forkvm:home\` replaces the
resources into the new home. Generated names are derived from each resource's URN, so
\`pulumi preview\` shows the names \`pulumi up\` then creates.

Inputs accept Pulumi \`Input<>\` values. Invalid inputs fail \`pulumi preview\` with the property named
(\`property memoryMiB value 64 has a problem: must be at least 128: image default needs 128 MiB\`).
Every output also repeats the inputs as checked (defaults applied). "on change" says what an update
does when that input changes; *replace* of a resource with a generated name creates the new one first.

## ParentVm

A VM booted from an image with its applications started and warm (\`init\`): the thing a Template
freezes. \`read\` (\`pulumi refresh\`) reports its live status; a parent that crashed or was stopped is
restarted in place on the next update (its \`init\` commands run again); a parent a \`frozen\` Template
took is \`consumed\` and stays so.

\`\`\`ts
const parent = new ParentVm("web", { memoryMiB: 256, init: ["echo warm > /tmp/state"] });
\`\`\`

**Secrets.** Any \`init\` command, or the whole list, may be a Pulumi secret (and so may any
InstantClonePool \`metadata\` value). forkvm then keeps it out of everything it shows: progress lines,
log messages and error messages read \`[secret]\` in its place; when a secret command fails, the error
gives its number and exit code but not its output, which may quote it. The output of the same name
is secret (encrypted in the stack's state). forkvm stores the value only where it must, to use it
again: an \`init\` command in the parent's manifest, to run it again when the parent is started again;
a metadata value in the child's manifest and in its guest's \`/etc/forkvm/metadata\`, which is what it
is for. Manifests are mode 0600 in the 0700 state directory: readable by the user who runs
\`pulumi\`, and by root. (The offline deployment used without the Pulumi CLI keeps its own state in
plaintext.)

${inputTable(ParentVmInputs, replaceOrUpdate(PARENT_REPLACE_KEYS))}

${outputTable(ParentVmOutputs, ParentVmInputs)}

## Template

A parent frozen as a powered-on template: memory image, device checkpoint, base disk. Immutable:
every input change captures a new template (a new \`generation\`), and pools that use it roll over to
it. Deleting a template that still has children is refused, naming them and the pools they belong to.

\`\`\`ts
const tmpl = new Template("web-t", { parent: parent.id, source: "frozen" });
\`\`\`

Pass the ParentVm itself (or its \`id\`): the SDK then hands the parent's name and shape to the
template, so the preview of a new fleet already knows its memory size.

${inputTable(TemplateInputs, replaceOrUpdate(TEMPLATE_REPLACE_KEYS))}

${outputTable(TemplateOutputs, TemplateInputs)}

## InstantClonePool

A fleet of running children forked from a template, named \`<namePrefix>-<n>\` (the prefix defaults
to the pool's name), kept as declared. The pool is an engine object (\`forkvm pool inspect <name>\`):
the engine plans and applies every change, and the CLI's \`forkvm pool apply\` does the same.

- \`size\` changes add or remove children in place (the highest indexes go first);
- a child that died shows in \`read\` (\`status: crashed\` or \`missing\`) and the next update heals it:
  restarted in place (persistent children keep their disk), or forked afresh under the same name;
- a new template generation (or a change of \`persistent\`, \`macPrefix\`, \`forwards\`) rolls the children
  over in batches of \`updatePolicy.maxUnavailable\`, never more down at once; a failing batch stops
  the rollout and the update reports a partial failure, with the state of every child recorded;
- a pool owns the children it created (recorded in each child's manifest) and nothing else: it
  never removes, replaces or renames an object it did not create; a name it needs that another
  object holds fails the update, naming that object;
- \`check\` computes \`estimate\` (memory shared with the template vs private per child, delta disks)
  and \`plan\` (what the update will do), so \`pulumi preview\` shows both; the SDK logs them on the
  pool's row. Progress of long operations (forking 100 children) shows on the same row.

\`\`\`ts
const pool = new InstantClonePool("web-pool", { template: tmpl.id, size: 20, persistent: false });
export const children = pool.children;
\`\`\`

${inputTable(InstantClonePoolInputs, poolChange)}

${outputTable(InstantClonePoolOutputs, InstantClonePoolInputs)}

### What each child finds in its guest

\`/etc/forkvm/metadata\` (\`KEY='value'\` lines, for \`. /etc/forkvm/metadata\`) and
\`/etc/forkvm/metadata.json\`: the pool's \`metadata\` with placeholders filled in, plus
\`FORKVM_POOL\`, \`FORKVM_INDEX\`, \`FORKVM_NAME\`, \`FORKVM_TEMPLATE\`, \`FORKVM_GENERATION\`.
The engine writes them after every fork, reset and start of the child, and rewrites them in place
when the pool's \`metadata\` changes (\`forkvm\`'s \`setMetadata\` is the one way metadata changes:
the child's manifest and its guest together).
`;
}

export const DOCS_FILE = path.join(__dirname, "..", __dirname.includes(`${path.sep}dist${path.sep}`) ? ".." : "", "docs", "resources.md");

if (require.main === module) {
  fs.mkdirSync(path.dirname(DOCS_FILE), { recursive: true });
  fs.writeFileSync(DOCS_FILE, render());
  console.log(`wrote ${path.relative(process.cwd(), DOCS_FILE)}`);
}
