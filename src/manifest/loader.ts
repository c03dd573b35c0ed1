/**
 * Loads a directory of manifests in two phases, like ignition: the JSON
 * Schema first, then semantic checks (sizes, the host's CPUs, duplicate
 * names and ids across files). Every error points at the file, line and
 * column of the offending YAML node and says what was expected and what was
 * given. An invalid document never stops the others from loading.
 */
import type { ErrorObject } from 'ajv';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Document, isMap, isPair, isScalar, LineCounter, Node as YamlNode, parseAllDocuments } from 'yaml';
import { maxQueues } from '../device-spec';
import { parseSize } from '../sizes';
import { manifestValidator, ManifestSpec, schemaDocument, UblkDeviceManifest } from './schema';

/**
 * A problem with a manifest, located in its file. `line` and `column` are
 * 1-based; 0 means the whole file (or the directory, for permissions).
 */
export interface ManifestError {
  /** File name relative to the manifest directory; the directory itself for directory-wide problems. */
  file: string;
  line: number;
  column: number;
  /** Field path, e.g. 'spec.queues'; '' for the file or document as a whole. */
  path: string;
  message: string;
  /** metadata.name of the document, when it could be read: the reconciler then leaves that device alone. */
  manifestName?: string;
}

/** A valid manifest with the schema's defaults applied: one device the host should have. */
export interface LoadedManifest {
  name: string;
  /** File name relative to the manifest directory. */
  file: string;
  /** Line where the document starts. */
  line: number;
  spec: ManifestSpec;
  /** sha256 of the canonical JSON of the defaulted spec: a different hash means the device must change. */
  hash: string;
  document: UblkDeviceManifest;
}

/** Everything one read of the directory found: valid manifests, errors, and the files read. */
export interface LoadResult {
  manifests: LoadedManifest[];
  errors: ManifestError[];
  /** Manifest files considered, relative to the directory, sorted. */
  files: string[];
}

/** How to load; the CLI sets `checkPermissions` when it runs as root. */
export interface LoadOptions {
  /** Refuse a directory or files not owned by root or writable by group/others (like sshd's StrictModes). */
  checkPermissions?: boolean;
  /** Most queues a device may have; defaults to this host's possible CPUs. */
  maxQueues?: number;
}

/** One line per error, the way compilers print them: `data.yaml:7:12: spec.queues: must be at most 32, got 64`. */
export function formatManifestError(e: ManifestError): string {
  const where = e.line > 0 ? `${e.file}:${e.line}:${e.column}` : e.file;
  return `${where}: ${e.path ? `${e.path}: ` : ''}${e.message}`;
}

/** Manifest files are *.yaml and *.yml; hidden files, editor swap and backup files are not. */
export function isManifestFile(name: string): boolean {
  return !name.startsWith('.') && /\.ya?ml$/.test(name);
}

function levenshtein(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let diagonal = row[0]!;
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const above = row[j]!;
      row[j] = Math.min(above + 1, row[j - 1]! + 1, diagonal + (a[i - 1] === b[j - 1] ? 0 : 1));
      diagonal = above;
    }
  }
  return row[b.length]!;
}

/** The allowed name closest to `name` within edit distance 2 (case-insensitive), for a "did you mean" hint. */
export function closest(name: string, allowed: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = 3;
  for (const candidate of allowed) {
    const d = levenshtein(name.toLowerCase(), candidate.toLowerCase());
    if (d < bestDistance) {
      best = candidate;
      bestDistance = d;
    }
  }
  return best;
}

interface Position {
  line: number;
  column: number;
}

/** One YAML document of a file, with what is needed to point errors at its nodes. */
class DocumentContext {
  readonly name: string | undefined;

  constructor(
    readonly file: string,
    readonly doc: Document,
    private readonly lines: LineCounter,
  ) {
    const name = doc.getIn(['metadata', 'name']);
    this.name = typeof name === 'string' ? name : undefined;
  }

  position(offset: number): Position {
    const { line, col } = this.lines.linePos(offset);
    return { line, column: col };
  }

  /** Where the document's content starts. */
  start(): Position {
    return this.position(this.doc.contents?.range?.[0] ?? 0);
  }

  /** The node at `segments`, or its nearest ancestor that exists in the YAML. */
  nodeAt(segments: readonly string[]): YamlNode | undefined {
    for (let n = segments.length; n > 0; n--) {
      const node = this.doc.getIn(segments.slice(0, n), true);
      if (isNode(node)) return node;
    }
    return this.doc.contents ?? undefined;
  }

  /** The key node of `key` in the mapping at `segments`: unknown fields are reported at their key. */
  keyAt(segments: readonly string[], key: string): YamlNode | undefined {
    const map = segments.length > 0 ? this.doc.getIn(segments, true) : this.doc.contents;
    if (!isMap(map)) return undefined;
    const pair = map.items.find((p) => isPair(p) && isScalar(p.key) && String(p.key.value) === key);
    return pair && isScalar(pair.key) ? pair.key : undefined;
  }

  error(segments: readonly string[], message: string, node = this.nodeAt(segments)): ManifestError {
    const at = node?.range ? this.position(node.range[0]) : this.start();
    return { file: this.file, ...at, path: segments.join('.'), message, manifestName: this.name };
  }
}

function isNode(value: unknown): value is YamlNode {
  return typeof value === 'object' && value !== null && 'range' in value && Array.isArray((value as YamlNode).range);
}

/** How a given value reads in a message: strings quoted, structures named. */
function describeValue(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v);
  if (Array.isArray(v)) return 'a list';
  if (v === null) return 'null';
  if (typeof v === 'object') return Object.getPrototypeOf(v) === Object.prototype ? 'a mapping' : String(v);
  return String(v);
}

const typeWords: Record<string, string> = {
  integer: 'a whole number',
  number: 'a number',
  string: 'a string',
  boolean: 'true or false',
  object: 'a mapping',
  array: 'a list',
  null: 'null',
};

const targetTypes: string[] = schemaDocument.properties.spec.properties.target.oneOf.map(
  (branch: { properties: { type: { const: string } } }) => branch.properties.type.const,
);

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
  const message = `unknown field "${extra}"${hint ? `: did you mean "${hint}"?` : ''}`;
  return ctx.error([...segments, extra], message, ctx.keyAt(segments, extra) ?? ctx.nodeAt(segments));
}

function targetTypeError(ctx: DocumentContext, e: ErrorObject, segments: string[]): ManifestError {
  const { tag, tagValue } = e.params as { tag: string; tagValue: unknown };
  if (tagValue === undefined) return ctx.error([...segments, tag], 'is required', ctx.nodeAt(segments));
  return ctx.error([...segments, tag], `must be one of ${targetTypes.join(', ')}, got ${describeValue(tagValue)}`);
}

/** What a value must be, in words; undefined for keywords this schema does not use. */
function expectation(e: ErrorObject): string | undefined {
  const expected = (e.parentSchema as { 'x-expected'?: string } | undefined)?.['x-expected'];
  const params = e.params as Record<string, any>;
  switch (e.keyword) {
    case 'type':
      return expected ?? ([] as string[]).concat(params.type).map((t) => typeWords[t] ?? t).join(' or ');
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
function schemaErrors(ctx: DocumentContext, errors: ErrorObject[]): ManifestError[] {
  const byPath = new Map<string, ManifestError>();
  for (const e of errors) {
    const err = schemaError(ctx, e);
    if (err && !byPath.has(err.path)) byPath.set(err.path, err);
  }
  return [...byPath.values()];
}

const MIN_IO_SIZE = 4096;
const MAX_IO_SIZE = 32 * 1024 * 1024;

/** The bytes of a size the schema accepted, or the reason it cannot be used. */
function sizeBytes(value: number | string): number | string {
  const parsed = parseSize(value);
  if ('error' in parsed) return `must be a whole number of bytes, got ${describeValue(value)}`;
  if (parsed.bytes === 0) return `must be greater than 0, got ${describeValue(value)}`;
  return parsed.bytes;
}

function deviceSizeError(spec: ManifestSpec): string | undefined {
  if (spec.size === undefined) return undefined;
  const bytes = sizeBytes(spec.size);
  if (typeof bytes === 'string') return bytes;
  const lbs = spec.logicalBlockSize ?? 512;
  return bytes % lbs === 0 ? undefined : `must be a multiple of the logical block size (${lbs}), got ${bytes}`;
}

function maxIoSizeError(spec: ManifestSpec): string | undefined {
  if (spec.maxIoSize === undefined) return undefined;
  const bytes = sizeBytes(spec.maxIoSize);
  if (typeof bytes === 'string') return bytes;
  const fits = bytes >= MIN_IO_SIZE && bytes <= MAX_IO_SIZE && bytes % 4096 === 0;
  return fits ? undefined : `must be a multiple of 4KiB between 4KiB and 32MiB, got ${bytes}`;
}

/** Checks the schema cannot express: sizes that parse and fit the block size, and this host's CPUs. */
function semanticErrors(ctx: DocumentContext, spec: ManifestSpec, queueLimit: number): ManifestError[] {
  const problems: [string, string | undefined][] = [
    ['size', deviceSizeError(spec)],
    ['maxIoSize', maxIoSizeError(spec)],
    ['queues', spec.queues !== undefined && spec.queues > queueLimit ? `must be at most ${queueLimit}, got ${spec.queues}` : undefined],
  ];
  return problems.filter(([, message]) => message !== undefined).map(([field, message]) => ctx.error(['spec', field], message!));
}

/** JSON with object keys sorted by code unit, so equal specs always hash the same. */
function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value && typeof value === 'object') {
    const keys = Object.keys(value).sort();
    return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson((value as Record<string, unknown>)[k])}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

/** `type: null` names the null target, not YAML's null: users should not need quotes. */
function nullTargetAsString(data: unknown): void {
  const target = (data as { spec?: { target?: { type?: unknown } } } | null)?.spec?.target;
  if (target && typeof target === 'object' && 'type' in target && target.type === null) target.type = 'null';
}

/** One document of a file after both checks: a manifest when it is valid, errors otherwise. */
interface CheckedDocument {
  ctx: DocumentContext;
  errors: ManifestError[];
  manifest?: LoadedManifest;
}

/** The first syntax error of a document; what follows it is usually a consequence. */
function syntaxErrors(ctx: DocumentContext): ManifestError[] {
  const first = ctx.doc.errors[0];
  if (!first) return [];
  return [{ file: ctx.file, ...ctx.position(first.pos[0]), path: '', message: `invalid YAML: ${first.message}`, manifestName: ctx.name }];
}

/** Checks one document; undefined for an empty one (a trailing `---`, only comments). */
function checkDocument(ctx: DocumentContext, queueLimit: number): CheckedDocument | undefined {
  const syntax = syntaxErrors(ctx);
  if (syntax.length > 0) return { ctx, errors: syntax };
  let data: unknown;
  try {
    data = ctx.doc.toJS();
  } catch (err) {
    return { ctx, errors: [ctx.error([], `invalid YAML: ${(err as Error).message}`)] };
  }
  if (data === null || data === undefined) return undefined;
  nullTargetAsString(data);
  const validate = manifestValidator();
  if (!validate(data)) return { ctx, errors: schemaErrors(ctx, validate.errors ?? []) };
  const semantic = semanticErrors(ctx, data.spec, queueLimit);
  if (semantic.length > 0) return { ctx, errors: semantic };
  const manifest: LoadedManifest = {
    name: data.metadata.name,
    file: ctx.file,
    line: ctx.start().line,
    spec: data.spec,
    hash: crypto.createHash('sha256').update(canonicalJson(data.spec)).digest('hex'),
    document: data,
  };
  return { ctx, errors: [], manifest };
}

function fileError(file: string, message: string): ManifestError {
  return { file, line: 0, column: 0, path: '', message };
}

/** Every non-empty document of one file, checked on its own. */
function checkFile(dir: string, file: string, queueLimit: number): CheckedDocument[] | ManifestError {
  let text: string;
  try {
    text = fs.readFileSync(path.join(dir, file), 'utf8');
  } catch (err) {
    return fileError(file, `cannot read: ${(err as Error).message}`);
  }
  const lines = new LineCounter();
  const checked: CheckedDocument[] = [];
  for (const doc of parseAllDocuments(text, { lineCounter: lines, prettyErrors: false })) {
    const result = checkDocument(new DocumentContext(file, doc, lines), queueLimit);
    if (result) checked.push(result);
  }
  return checked;
}

function formatPosition(ctx: DocumentContext, segments: readonly string[]): string {
  const { line, column } = ctx.error(segments, '');
  return `${ctx.file}:${line}:${column}`;
}

/**
 * Adds an error to every document that shares a key (name or fixed id) with
 * another, each pointing at its own node and naming where the others are.
 */
function markDuplicates(docs: CheckedDocument[], field: string[], describe: (key: unknown) => string | undefined): void {
  const groups = new Map<string, CheckedDocument[]>();
  for (const d of docs) {
    const key = describe(d.ctx.doc.getIn(field));
    if (key !== undefined) groups.set(key, [...(groups.get(key) ?? []), d]);
  }
  for (const [key, group] of groups) {
    if (group.length < 2) continue;
    for (const d of group) {
      const others = group.filter((o) => o !== d).map((o) => formatPosition(o.ctx, field));
      d.errors.push(d.ctx.error(field, `${key} is also used by ${others.join(', ')}`));
    }
  }
}

function describeName(value: unknown): string | undefined {
  return typeof value === 'string' ? `name "${value}"` : undefined;
}

function describeId(value: unknown): string | undefined {
  return Number.isInteger(value) ? `device id ${value}` : undefined;
}

function modeOctal(mode: number): string {
  return (mode & 0o777).toString(8).padStart(4, '0');
}

/**
 * Why a root-run reconciler must not trust `p`: anyone who can write it
 * could have root create devices over any file. A path that cannot be
 * stat'ed (a dangling link) is left to the read, which reports it.
 */
function permissionProblem(p: string, what: 'directory' | 'file'): string | undefined {
  let st: fs.Stats;
  try {
    st = fs.statSync(p);
  } catch {
    return undefined;
  }
  if (st.uid !== 0) return `refusing ${what} owned by uid ${st.uid}, not root; fix with chown root, or pass --insecure-permissions`;
  if (st.mode & 0o022) {
    return `refusing ${what} writable by group/others (mode ${modeOctal(st.mode)}); fix with chmod go-w, or pass --insecure-permissions`;
  }
  return undefined;
}

/** Whether `p` is a file to read: regular files and links to them (a dangling link is read, and fails, loudly). */
function isReadableEntry(p: string): boolean {
  try {
    return fs.statSync(p).isFile();
  } catch {
    return true;
  }
}

function listManifestFiles(dir: string): string[] {
  return fs
    .readdirSync(dir)
    .filter((name) => isManifestFile(name) && isReadableEntry(path.join(dir, name)))
    .sort();
}

/** Errors by file, then position, as a compiler lists them; ties keep the schema's order. */
function inFileOrder(errors: ManifestError[], files: string[]): ManifestError[] {
  const rank = new Map(files.map((f, i) => [f, i]));
  return [...errors].sort((a, b) => rank.get(a.file)! - rank.get(b.file)! || a.line - b.line || a.column - b.column);
}

function assertDirectory(dir: string): void {
  let st: fs.Stats;
  try {
    st = fs.statSync(dir);
  } catch {
    throw new Error(`manifest directory ${dir} does not exist`);
  }
  if (!st.isDirectory()) throw new Error(`manifest directory ${dir} is not a directory`);
}

/**
 * Loads every manifest in `dir` (not recursive). Returns the valid
 * manifests with defaults applied and an error for each problem; a
 * document with errors, or whose name or fixed id is claimed twice, is
 * left out of `manifests`. Throws only when `dir` is missing or not a
 * directory (an environment error, not a manifest error).
 */
export function loadManifestDir(dir: string, opts: LoadOptions = {}): LoadResult {
  assertDirectory(dir);
  if (opts.checkPermissions) {
    const problem = permissionProblem(dir, 'directory');
    if (problem) return { manifests: [], errors: [fileError(dir, problem)], files: [] };
  }
  const queueLimit = opts.maxQueues ?? maxQueues();
  const files = listManifestFiles(dir);
  const errors: ManifestError[] = [];
  const docs: CheckedDocument[] = [];
  for (const file of files) {
    const problem = opts.checkPermissions ? permissionProblem(path.join(dir, file), 'file') : undefined;
    const checked = problem ? fileError(file, problem) : checkFile(dir, file, queueLimit);
    if (Array.isArray(checked)) docs.push(...checked);
    else errors.push(checked);
  }
  markDuplicates(docs, ['metadata', 'name'], describeName);
  markDuplicates(docs, ['spec', 'id'], describeId);
  const manifests: LoadedManifest[] = [];
  for (const d of docs) {
    errors.push(...d.errors);
    if (d.manifest && d.errors.length === 0) manifests.push(d.manifest);
  }
  return { manifests, errors: inFileOrder(errors, files), files };
}
