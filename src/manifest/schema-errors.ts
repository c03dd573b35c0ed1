/**
 * Turns ajv's errors into manifest errors that point at the offending YAML
 * node and say what was expected and what was given, at most one per field.
 */
import type { ErrorObject } from 'ajv';
import { TARGET_TYPES } from '../spec/limits';
import { quote } from '../spec/show-value';
import { ManifestError } from './manifest-error';
import { closest } from './suggest';
import { describeValue, DocumentContext } from './yaml-document';

const typeWords: Record<string, string> = {
  integer: 'a whole number',
  number: 'a number',
  string: 'a string',
  boolean: 'true or false',
  object: 'a mapping',
  array: 'a list',
  null: 'null',
};

function pointerSegments(instancePath: string): string[] {
  return instancePath
    .split('/')
    .slice(1)
    .map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'));
}

/** `is required`, naming the target type when the requirement comes from it (size). */
function requiredError(ctx: DocumentContext, e: ErrorObject, segments: string[]): ManifestError {
  const missing = (e.params as { missingProperty: string }).missingProperty;
  const targetType = (e.data as { target?: { type?: unknown } } | undefined)?.target?.type;
  const why = e.schemaPath.includes('/then/') && typeof targetType === 'string' ? ` for the ${targetType} target` : '';
  return ctx.error([...segments, missing], `is required${why}`, ctx.nodeAt(segments));
}

function unknownFieldError(ctx: DocumentContext, e: ErrorObject, segments: string[]): ManifestError {
  const extra = (e.params as { additionalProperty: string }).additionalProperty;
  const allowed = Object.keys((e.parentSchema as { properties?: object } | undefined)?.properties ?? {});
  const hint = closest(extra, allowed);
  const message = `unknown field ${quote(extra)}${hint ? `: did you mean "${hint}"?` : ''}`;
  return ctx.error([...segments, extra], message, ctx.keyAt(segments, extra) ?? ctx.nodeAt(segments));
}

function targetTypeError(ctx: DocumentContext, e: ErrorObject, segments: string[]): ManifestError {
  const { tag, tagValue } = e.params as { tag: string; tagValue: unknown };
  if (tagValue === undefined) return ctx.error([...segments, tag], 'is required', ctx.nodeAt(segments));
  if (tagValue === '') return ctx.error([...segments, tag], `is empty: must be one of ${TARGET_TYPES.join(', ')}`);
  return ctx.error([...segments, tag], `must be one of ${TARGET_TYPES.join(', ')}, got ${describeValue(tagValue)}`);
}

/** What a value must be, in words; undefined for keywords this schema does not use. */
function expectation(e: ErrorObject): string | undefined {
  const expected = (e.parentSchema as { 'x-expected'?: string } | undefined)?.['x-expected'];
  // ajv's params differ per keyword; each case below reads the ones its keyword has.
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  const params = e.params as Record<string, any>;
  switch (e.keyword) {
    case 'type':
      return (
        expected ??
        ([] as string[])
          .concat(params.type)
          .map((t) => typeWords[t] ?? t)
          .join(' or ')
      );
    case 'pattern':
      return expected ?? `text matching ${params.pattern}`;
    case 'maximum':
      return `at most ${params.limit}`;
    case 'minimum':
      return `at least ${params.limit}`;
    case 'maxLength':
      return `at most ${params.limit} characters`;
    case 'enum':
      return `one of ${params.allowedValues.join(', ')}`;
    case 'const':
      return JSON.stringify(params.allowedValue);
    default:
      return undefined;
  }
}

/** Rewrites one ajv error to say what is expected and what was given; undefined for summary errors. */
function schemaError(ctx: DocumentContext, e: ErrorObject): ManifestError | undefined {
  const segments = pointerSegments(e.instancePath);
  switch (e.keyword) {
    case 'required':
      return requiredError(ctx, e, segments);
    case 'additionalProperties':
      return unknownFieldError(ctx, e, segments);
    case 'discriminator':
      return targetTypeError(ctx, e, segments);
    case 'if':
    case 'oneOf':
      return undefined;
    default: {
      const got = e.keyword === 'maxLength' ? `${String(e.data).length} characters` : describeValue(e.data);
      const expected = expectation(e);
      return ctx.error(segments, `${expected ? `must be ${expected}` : (e.message ?? 'is invalid')}, got ${got}`);
    }
  }
}

/** Schema errors, at most one per field: a second complaint about the same node adds nothing. */
export function schemaErrors(ctx: DocumentContext, errors: ErrorObject[]): ManifestError[] {
  const byPath = new Map<string, ManifestError>();
  for (const e of errors) {
    const err = schemaError(ctx, e);
    if (err && !byPath.has(err.path)) byPath.set(err.path, err);
  }
  return [...byPath.values()];
}
