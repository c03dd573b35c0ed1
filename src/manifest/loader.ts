/**
 * Loads a directory of manifests in two phases, like ignition: the JSON
 * Schema first, then semantic checks (sizes, the host's CPUs, duplicate
 * names and ids across files). Every error points at the file, line and
 * column of the offending YAML node and says what was expected and what was
 * given. An invalid document never stops the others from loading.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LineCounter, parseAllDocuments } from 'yaml';
import { HostLimits, maxQueues, specProblems } from '../spec/device-spec';
import { fileError, ManifestError } from './manifest-error';
import { permissionProblem } from './permissions';
import { manifestValidator, ManifestSpec, UblkDeviceManifest } from './schema';
import { schemaErrors } from './schema-errors';
import { DocumentContext } from './yaml-document';

export type { ManifestError } from './manifest-error';
export { formatManifestError } from './manifest-error';
export { closest } from './suggest';

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

/** Manifest files are *.yaml and *.yml; hidden files, editor swap and backup files are not. */
export function isManifestFile(name: string): boolean {
  return !name.startsWith('.') && /\.ya?ml$/.test(name);
}

/**
 * Checks the schema cannot express — sizes that parse and fit the block
 * size, this host's CPUs — with the same validators ublkctl and the library use.
 */
function semanticErrors(ctx: DocumentContext, spec: ManifestSpec, limits: HostLimits): ManifestError[] {
  return specProblems(spec, limits).map((p) => ctx.error(['spec', ...p.field.split('.')], p.detail));
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
  return [
    {
      file: ctx.file,
      ...ctx.position(first.pos[0]),
      path: '',
      message: `invalid YAML: ${first.message}`,
      manifestName: ctx.name,
    },
  ];
}

/** Checks one document; undefined for an empty one (a trailing `---`, only comments). */
function checkDocument(ctx: DocumentContext, limits: HostLimits): CheckedDocument | undefined {
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
  const semantic = semanticErrors(ctx, data.spec, limits);
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

/** Every non-empty document of one file, checked on its own. */
function checkFile(dir: string, file: string, limits: HostLimits): CheckedDocument[] | ManifestError {
  let text: string;
  try {
    text = fs.readFileSync(path.join(dir, file), 'utf8');
  } catch (err) {
    return fileError(file, `cannot read: ${(err as Error).message}`);
  }
  const lines = new LineCounter();
  const checked: CheckedDocument[] = [];
  for (const doc of parseAllDocuments(text, { lineCounter: lines, prettyErrors: false })) {
    const result = checkDocument(new DocumentContext(file, doc, lines), limits);
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
function markDuplicates(
  docs: CheckedDocument[],
  field: string[],
  describe: (key: unknown) => string | undefined,
): void {
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
  const limits: HostLimits = { maxQueues: opts.maxQueues ?? maxQueues() };
  const files = listManifestFiles(dir);
  const errors: ManifestError[] = [];
  const docs: CheckedDocument[] = [];
  for (const file of files) {
    const problem = opts.checkPermissions ? permissionProblem(path.join(dir, file), 'file') : undefined;
    const checked = problem ? fileError(file, problem) : checkFile(dir, file, limits);
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
