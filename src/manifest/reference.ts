/**
 * The README's manifest reference, generated from the schema's
 * descriptions and defaults so the two cannot drift (a unit test compares
 * them; `npm run docs:manifest` prints it).
 */
import { schemaDocument } from './schema';

function cell(value: unknown): string {
  return value === undefined ? '' : `\`${JSON.stringify(value)}\``;
}

/** The parts of a JSON Schema node the reference reads. */
interface SchemaNode {
  type?: string | string[];
  enum?: unknown[];
  const?: unknown;
  default?: unknown;
  description?: string;
  properties?: Record<string, SchemaNode>;
  required?: string[];
  oneOf?: SchemaNode[];
}

function typeOf(field: SchemaNode): string {
  if (field.enum) return field.enum.map((v: unknown) => `\`${String(v)}\``).join(' \\| ');
  if (field.const !== undefined) return `\`${String(field.const)}\``;
  return ([] as string[]).concat(field.type ?? 'object').join(' or ');
}

/** Markdown tables: document fields, spec fields, and the fields of each target type. */
export function manifestReference(): string {
  const rows: string[] = ['| field | type | default | meaning |', '|---|---|---|---|'];
  const add = (name: string, field: SchemaNode, required: boolean): void => {
    rows.push(
      `| \`${name}\`${required ? ' (required)' : ''} | ${typeOf(field)} | ${cell(field.default)} | ${field.description ?? ''} |`,
    );
  };
  const top = schemaDocument as SchemaNode;
  for (const [name, field] of Object.entries(top.properties ?? {})) {
    if (name === 'metadata') {
      add('metadata.name', field.properties!.name!, true);
      continue;
    }
    if (name === 'spec') continue;
    add(name, field, (top.required ?? []).includes(name));
  }
  const spec = top.properties!.spec!;
  const kind = (branch: SchemaNode): string => String(branch.properties!.type!.const);
  for (const [name, field] of Object.entries(spec.properties ?? {})) {
    if (name === 'target') {
      add('spec.target.type', { enum: field.oneOf!.map(kind), description: field.description }, true);
      for (const branch of field.oneOf!) {
        for (const [key, sub] of Object.entries(branch.properties ?? {})) {
          if (key === 'type') continue;
          add(`spec.target.${key} (${kind(branch)})`, sub, (branch.required ?? []).includes(key));
        }
      }
      continue;
    }
    add(`spec.${name}`, field, (spec.required ?? []).includes(name));
  }
  const targets = spec.properties!.target!.oneOf!.map((b) => `- \`${kind(b)}\`: ${b.properties!.type!.description}`);
  return [...rows, '', 'Target types:', '', ...targets].join('\n');
}

if (require.main === module) console.log(manifestReference());
