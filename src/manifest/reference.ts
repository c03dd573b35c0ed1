/**
 * The README's manifest reference, generated from the schema's
 * descriptions and defaults so the two cannot drift (a unit test compares
 * them; `npm run docs:manifest` prints it).
 */
import { schemaDocument } from './schema';

function cell(value: unknown): string {
  return value === undefined ? '' : `\`${JSON.stringify(value)}\``;
}

function typeOf(field: Record<string, any>): string {
  if (field.enum) return field.enum.map((v: unknown) => `\`${String(v)}\``).join(' \\| ');
  if (field.const) return `\`${field.const}\``;
  return ([] as string[]).concat(field.type ?? 'object').join(' or ');
}

/** Markdown tables: document fields, spec fields, and the fields of each target type. */
export function manifestReference(): string {
  const rows: string[] = ['| field | type | default | meaning |', '|---|---|---|---|'];
  const add = (name: string, field: Record<string, any>, required: boolean): void => {
    rows.push(`| \`${name}\`${required ? ' (required)' : ''} | ${typeOf(field)} | ${cell(field.default)} | ${field.description ?? ''} |`);
  };
  const top = schemaDocument;
  for (const [name, field] of Object.entries<Record<string, any>>(top.properties)) {
    if (name === 'metadata') {
      add('metadata.name', field.properties.name, true);
      continue;
    }
    if (name === 'spec') continue;
    add(name, field, top.required.includes(name));
  }
  const spec = top.properties.spec;
  for (const [name, field] of Object.entries<Record<string, any>>(spec.properties)) {
    if (name === 'target') {
      add('spec.target.type', { enum: field.oneOf.map((b: any) => b.properties.type.const), description: field.description }, true);
      for (const branch of field.oneOf) {
        for (const [key, sub] of Object.entries<Record<string, any>>(branch.properties)) {
          if (key === 'type') continue;
          add(`spec.target.${key} (${branch.properties.type.const})`, sub, (branch.required ?? []).includes(key));
        }
      }
      continue;
    }
    add(`spec.${name}`, field, spec.required.includes(name));
  }
  const targets = spec.properties.target.oneOf.map((b: any) => `- \`${b.properties.type.const}\`: ${b.properties.type.description}`);
  return [...rows, '', 'Target types:', '', ...targets].join('\n');
}

if (require.main === module) console.log(manifestReference());
