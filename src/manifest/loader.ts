/**
 * Loads a directory of manifests in two phases, like ignition: the JSON
 * Schema first, then semantic checks across documents (sizes, duplicate
 * names and ids). Every error points at the file, line and column of the
 * offending YAML node and names the field and what was expected. An
 * invalid document never stops the others from loading.
 */
import type { ErrorObject } from 'ajv';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Document, isMap, isPair, isScalar, LineCounter, parseAllDocuments, Node as YamlNode } from 'yaml';
import { maxQueues } from '../device-spec';
import { parseSize } from '../sizes';
import { manifestValidator, ManifestSpec, UblkDeviceManifest } from './schema';

/** A problem with a manifest, located in its file. line 0: the whole file or directory. */
export interface ManifestError {
  file: string;
  line: number;
  column: number;
  /** Field path, e.g. 'spec.queues'; '' for the file as a whole. */
  path: string;
  message: string;
  /** metadata.name of the document, when it could be read: its device is then left alone. */
  manifestName?: string;
}

/** A valid manifest with its defaults applied. */
export interface LoadedManifest {
  name: string;
  /** File name relative to the manifest directory. */
  file: string;
  line: number;
  spec: ManifestSpec;
  /** sha256 of the defaulted spec: a different hash means the device must change. */
  hash: string;
  document: UblkDeviceManifest;
}

export interface LoadResult {
  manifests: LoadedManifest[];
  errors: ManifestError[];
  files: string[];
}

/** `data.yaml:7:12: spec.queues: must be at most 32, got 64`. */
export function formatManifestError(e: ManifestError): string {
  const where = e.line > 0 ? `${e.file}:${e.line}:${e.column}` : e.file;
  return `${where}: ${e.path ? `${e.path}: ` : ''}${e.message}`;
}

/** Manifest files are *.yaml and *.yml; hidden files, swap and backup files are not. */
export function isManifestFile(name: string): boolean {
  return !name.startsWith('.') && /\.ya?ml$/.test(name);
}

interface Located {
  line: number;
  column: number;
}

class DocumentContext {
  constructor(
    readonly file: string,
    readonly doc: Document,
    readonly lines: LineCounter,
    readonly name: string | undefined,
  ) {}

  at(offset: number | undefined): Located {
    const pos = this.lines.linePos(offset ?? 0);
    return { line: pos.line, column: pos.col };
  }

  /** The node at `segments`, or the nearest ancestor that exists. */
  nodeAt(segments: string[]): YamlNode | undefined {
    for (let n = segments.length; n >= 0; n--) {
      const node = this.doc.getIn(segments.slice(0, n), true) as YamlNode | undefined;
      if (node && (node as { range?: unknown }).range) return node;
    }
    return this.doc.contents ?? undefined;
  }

  /** The key node of `key` in the mapping at `segments`. */
  keyAt(segments: string[], key: string): YamlNode | undefined {
    const map = this.doc.getIn(segments, true);
    if (!isMap(map)) return undefined;
    const pair = map.items.find((p) => isPair(p) && isScalar(p.key) && p.key.value === key);
    return pair && isScalar(pair.key) ? pair.key : undefined;
  }

  error(segments: string[], message: string, node?: YamlNode): ManifestError {
    const target = node ?? this.nodeAt(segments);
    return {
      file: this.file,
      ...this.at((target as { range?: [number, number, number] } | undefined)?.range?.[0]),
      path: segments.join('.'),
      message,
      manifestName: this.name,
    };
  }
}

function describeValue(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v);
  if (Array.isArray(v)) return 'a list';
  if (v === null) return 'null';
  if (typeof v === 'object') return 'a mapping';
  return String(v);
}

function levenshtein(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let prev = row[0]!;
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const cur = row[j]!;
      row[j] = Math.min(row[j]! + 1, row[j - 1]! + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = cur;
    }
  }
  return row[b.length]!;
}

/** The closest allowed name within edit distance 2, for a "did you mean" hint. */
export function closest(name: string, allowed: string[]): string | undefined {
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

const typeWords: Record<string, string> = {
  integer: 'a whole number',
  number: 'a number',
  string: 'a string',
  boolean: 'true or false',
  object: 'a mapping',
  array: 'a list',
};

/** Rewrites one ajv error to say what is expected and what was given. */
function schemaError(ctx: DocumentContext, e: ErrorObject): ManifestError | undefined {
  const segments = e.instancePath.split('/').filter(Boolean);
  const expected = (e.parentSchema as { 'x-expected'?: string } | undefined)?.['x-expected'];
  const got = describeValue(e.data);
  switch (e.keyword) {
    case 'required': {
      const missing = (e.params as { missingProperty: string }).missingProperty;
      const detail = segments.join('.') === 'spec' && missing === 'size' ? ' for this target type' : '';
      return ctx.error([...segments, missing], `is required${detail}`, ctx.nodeAt(segments));
    }
    case 'additionalProperties': {
      const extra = (e.params as { additionalProperty: string }).additionalProperty;
      const allowed = Object.keys((e.parentSchema as { properties?: object })?.properties ?? {});
      const hint = closest(extra, allowed);
      return ctx.error(
        [...segments, extra],
        `unknown field "${extra}"${hint ? `: did you mean "${hint}"?` : allowed.length ? ` (expected one of ${allowed.join(', ')})` : ''}`,
        ctx.keyAt(segments, extra),
      );
    }
    case 'type': {
      const types = ([] as string[]).concat((e.params as { type: string | string[] }).type);
      const words = expected ?? types.map((t) => typeWords[t] ?? t).join(' or ');
      return ctx.error(segments, `must be ${words}, got ${got}`);
    }
    case 'maximum':
      return ctx.error(segments, `must be at most ${(e.params as { limit: number }).limit}, got ${got}`);
    case 'minimum':
      return ctx.error(segments, `must be at least ${(e.params as { limit: number }).limit}, got ${got}`);
    case 'enum':
      return ctx.error(segments, `must be one of ${(e.params as { allowedValues: unknown[] }).allowedValues.join(', ')}, got ${got}`);
    case 'const':
      return ctx.error(segments, `must be ${JSON.stringify((e.params as { allowedValue: unknown }).allowedValue)}, got ${got}`);
    case 'pattern':
      return ctx.error(segments, `must be ${expected ?? `text matching ${(e.params as { pattern: string }).pattern}`}, got ${got}`);
    case 'discriminator': {
      const p = e.params as { error: string; tag: string; tagValue: unknown };
      const types = ['null', 'memory', 'loop', 'js'];
      if (p.error === 'tag' && p.tagValue === undefined) return ctx.error([...segments, p.tag], 'is required', ctx.nodeAt(segments));
      return ctx.error([...segments, p.tag], `must be one of ${types.join(', ')}, got ${describeValue(p.tagValue)}`);
    }
    case 'if':
    case 'oneOf':
      return undefined; // the branch's own errors say what is wrong
    default:
      return ctx.error(segments, e.message ?? 'is invalid');
  }
}

/** Checks the schema cannot express: sizes that parse and fit the block size, queue count of this host. */
function semanticErrors(ctx: DocumentContext, spec: ManifestSpec): ManifestError[] {
  const errors: ManifestError[] = [];
  const lbs = spec.logicalBlockSize ?? 512;
  for (const field of ['size', 'maxIoSize'] as const) {
    const value = spec[field];
    if (value === undefined) continue;
    const parsed = parseSize(value);
    if ('error' in parsed) {
      errors.push(ctx.error(['spec', field], parsed.error));
      continue;
    }
    if (field === 'size' && parsed.bytes % lbs !== 0) {
      errors.push(ctx.error(['spec', field], `must be a multiple of the logical block size (${lbs}), got ${parsed.bytes}`));
    }
    if (field === 'maxIoSize' && (parsed.bytes % 4096 !== 0 || parsed.bytes > 32 * 1024 * 1024)) {
      errors.push(ctx.error(['spec', field], `must be a multiple of 4KiB up to 32MiB, got ${parsed.bytes}`));
    }
  }
  const limit = maxQueues();
  if (spec.queues !== undefined && spec.queues > limit) {
    errors.push(ctx.error(['spec', 'queues'], `must be at most ${limit} (CPUs on this host), got ${spec.queues}`));
  }
  return errors;
}

function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>).sort(([a], [b]) => a.localeCompare(b));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

/** `type: null` is the null target, not YAML's null: users should not need quotes. */
function nullTargetAsString(data: unknown): void {
  const target = (data as { spec?: { target?: { type?: unknown } } } | null)?.spec?.target;
  if (target && typeof target === 'object' && 'type' in target && target.type === null) target.type = 'null';
}

function readName(doc: Document): string | undefined {
  const name = doc.getIn(['metadata', 'name']);
  return typeof name === 'string' ? name : undefined;
}

interface Candidate {
  manifest: LoadedManifest;
  ctx: DocumentContext;
}

function loadFile(dir: string, file: string, errors: ManifestError[]): Candidate[] {
  const text = fs.readFileSync(path.join(dir, file), 'utf8');
  const lines = new LineCounter();
  const candidates: Candidate[] = [];
  for (const doc of parseAllDocuments(text, { lineCounter: lines, prettyErrors: true })) {
    if (!(doc instanceof Document)) continue;
    const ctx = new DocumentContext(file, doc, lines, readName(doc));
    if (doc.errors.length > 0) {
      for (const e of doc.errors) {
        const pos = e.linePos?.[0] ?? { line: 1, col: 1 };
        errors.push({ file, line: pos.line, column: pos.col, path: '', message: `YAML: ${e.message.split('\n')[0]!.replace(/ at line \d+, column \d+:?$/, '')}`, manifestName: ctx.name });
      }
      continue;
    }
    const value: unknown = doc.toJS();
    if (value === null || value === undefined) continue;
    const data = structuredClone(value);
    nullTargetAsString(data);
    const validate = manifestValidator();
    if (!validate(data)) {
      const seen = new Set<string>();
      for (const e of validate.errors ?? []) {
        const err = schemaError(ctx, e);
        if (!err) continue;
        const key = `${err.path}|${err.message}`;
        if (seen.has(key)) continue;
        seen.add(key);
        errors.push(err);
      }
      continue;
    }
    const manifest = data as UblkDeviceManifest;
    const semantic = semanticErrors(ctx, manifest.spec);
    if (semantic.length > 0) {
      errors.push(...semantic);
      continue;
    }
    const start = ctx.at((doc.contents as { range?: [number] } | null)?.range?.[0]);
    candidates.push({
      ctx,
      manifest: {
        name: manifest.metadata.name,
        file,
        line: start.line,
        spec: manifest.spec,
        hash: crypto.createHash('sha256').update(canonicalJson(manifest.spec)).digest('hex'),
        document: manifest,
      },
    });
  }
  return candidates;
}

/** Names or ids claimed by more than one manifest: an error on every one involved. */
function duplicateErrors(
  candidates: Candidate[],
  key: (c: Candidate) => string | undefined,
  field: string[],
  what: string,
  into: Map<Candidate, ManifestError[]>,
): void {
  const groups = new Map<string, Candidate[]>();
  for (const c of candidates) {
    const k = key(c);
    if (k !== undefined) groups.set(k, [...(groups.get(k) ?? []), c]);
  }
  for (const [k, group] of groups) {
    if (group.length < 2) continue;
    for (const c of group) {
      const others = group.filter((o) => o !== c).map((o) => `${o.manifest.file}:${o.manifest.line}`);
      into.set(c, [...(into.get(c) ?? []), c.ctx.error(field, `${what} ${k} is also used by ${others.join(', ')}`)]);
    }
  }
}

function permissionProblem(file: string): string | undefined {
  const st = fs.statSync(file);
  if (st.uid !== 0) return `refusing ${file}: owned by uid ${st.uid}, not root; fix with chown root, or pass --insecure-permissions`;
  if (st.mode & 0o022) {
    const mode = (st.mode & 0o777).toString(8).padStart(4, '0');
    return `refusing ${file}: writable by group/others (mode ${mode}); fix with chmod go-w, or pass --insecure-permissions`;
  }
  return undefined;
}

/**
 * Loads every manifest in `dir`. With `checkPermissions` (the CLI sets it
 * when running as root), the directory and each file must be owned by
 * root and not writable by group or others, like sshd's StrictModes.
 */
export function loadManifestDir(dir: string, opts: { checkPermissions?: boolean } = {}): LoadResult {
  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) {
    throw new Error(`manifest directory ${dir} does not exist or is not a directory`);
  }
  const errors: ManifestError[] = [];
  if (opts.checkPermissions) {
    const problem = permissionProblem(dir);
    if (problem) return { manifests: [], errors: [{ file: dir, line: 0, column: 0, path: '', message: problem }], files: [] };
  }
  const files = fs
    .readdirSync(dir, { withFileTypes: true })
    .filter((d) => d.isFile() && isManifestFile(d.name))
    .map((d) => d.name)
    .sort();
  const candidates: Candidate[] = [];
  for (const file of files) {
    if (opts.checkPermissions) {
      const problem = permissionProblem(path.join(dir, file));
      if (problem) {
        errors.push({ file, line: 0, column: 0, path: '', message: problem });
        continue;
      }
    }
    candidates.push(...loadFile(dir, file, errors));
  }
  const duplicates = new Map<Candidate, ManifestError[]>();
  duplicateErrors(candidates, (c) => c.manifest.name, ['metadata', 'name'], 'name', duplicates);
  const idOf = (c: Candidate): string | undefined => (c.manifest.spec.id === undefined ? undefined : String(c.manifest.spec.id));
  duplicateErrors(candidates, idOf, ['spec', 'id'], 'device id', duplicates);
  const manifests: LoadedManifest[] = [];
  for (const c of candidates) {
    const dup = duplicates.get(c);
    if (dup) errors.push(...dup);
    else manifests.push(c.manifest);
  }
  return { manifests, errors, files };
}
