/**
 * Loads a directory of manifests in two phases, like ignition: the JSON
 * Schema first, then semantic checks (sizes, the host's CPUs, duplicate
 * names and ids across files). Every error points at the file, line and
 * column of the offending YAML node and says what was expected and what was
 * given. An invalid document never stops the others from loading.
 */
import * as crypto from 'node:crypto';
import * as path from 'node:path';
import { Composer, Document, isAlias, isMap, isPair, isScalar, isSeq, LineCounter, Parser } from 'yaml';
import {
  canonicalJson,
  comparableDevice,
  comparableSpec,
  HostLimits,
  maxQueues,
  specProblems,
} from '../spec/device-spec';
import { clip, quote } from '../spec/show-value';
import { formatSize } from '../spec/sizes';
import { MAX_ALIAS_EXPANSION, MAX_ALIASES, MAX_DEPTH, MAX_DOCUMENTS, MAX_EXPANDED_CHARS } from './file-limits';
import { fileError, ManifestError } from './manifest-error';
import { assertDirectory, listManifestFiles, readManifestText } from './manifest-files';
import { permissionProblem } from './permissions';
import { manifestValidator, ManifestSpec, UblkDeviceManifest } from './schema';
import { schemaErrors } from './schema-errors';
import { DocumentContext } from './yaml-document';

export type { ManifestError } from './manifest-error';
export { formatManifestError } from './manifest-error';
export { closest } from './suggest';
export { isManifestFile } from './manifest-files';

/** A valid manifest with the schema's defaults applied: one device the host should have. */
export interface LoadedManifest {
  name: string;
  /** File name relative to the manifest directory. */
  file: string;
  /** Line where the document starts. */
  line: number;
  spec: ManifestSpec;
  /**
   * sha256 of the canonical JSON of the normalized spec (sizes in bytes,
   * defaults written out; `allowDataLoss` left out): a different hash means
   * the device must change, a cosmetic edit keeps it.
   */
  hash: string;
  /** The hash records written before specs were normalized carry (the defaulted spec as written). */
  legacyHash: string;
  /**
   * sha256 of the spec less what only its server does (comparableDevice): a
   * change of `hash` with the same `deviceHash` is applied by a handover.
   */
  deviceHash: string;
  document: UblkDeviceManifest;
}

/** Everything one read of the directory found: valid manifests, errors, and the files read. */
export interface LoadResult {
  manifests: LoadedManifest[];
  errors: ManifestError[];
  /** Manifest files considered, relative to the directory, sorted. */
  files: string[];
  /**
   * Files read whole whose every document is valid, with at least one
   * document: a name they no longer hold has been removed from them. An
   * empty, partial, unreadable or invalid file is never in this list.
   */
  validFiles: string[];
}

/** How to load; the CLI sets `checkPermissions` when it runs as root. */
export interface LoadOptions {
  /** Refuse a directory or files not owned by root or writable by group/others (like sshd's StrictModes). */
  checkPermissions?: boolean;
  /** Most queues a device may have; defaults to this host's possible CPUs. */
  maxQueues?: number;
  /** Files checked by an earlier load of this process (the watcher's passes): an unchanged text is not parsed again. */
  cache?: ManifestCache;
}

/**
 * What a long-lived watcher keeps between passes: each file's text and
 * the result of checking it. A pass still lists the directory, checks
 * permissions and reads every file; only a file whose text (and the host
 * limits it was checked against) is exactly what was checked before skips
 * the YAML parse, the schema and the semantic checks, whose result is a
 * function of those alone. Parsing is most of what a pass costs per
 * device, and most passes of a watcher find every file unchanged.
 * `ublk-reconcile --once` keeps one from process to process (toSaved,
 * fromSaved; reconciler/manifest-cache-file.ts).
 */
export class ManifestCache {
  private files = new Map<string, { text: string; maxQueues: number; checked: CheckedDocument[] }>();

  /** Whether set or keepOnly changed the cache since it was made or restored: a saved copy is then out of date. */
  changed = false;

  /** The checked documents of `file` when its text and limits are those checked before. */
  get(file: string, text: string, limits: HostLimits): CheckedDocument[] | undefined {
    const hit = this.files.get(file);
    if (!hit || hit.text !== text || hit.maxQueues !== limits.maxQueues) return undefined;
    // The load adds duplicate-name errors to these: each load gets its own error lists.
    return hit.checked.map((d) => ({ ...d, errors: [...d.errors] }));
  }

  set(file: string, text: string, limits: HostLimits, checked: CheckedDocument[]): void {
    this.changed = true;
    this.files.set(file, {
      text,
      maxQueues: limits.maxQueues,
      checked: checked.map((d) => ({ ...d, errors: [...d.errors] })),
    });
  }

  /** Forgets the files a load no longer found, so the cache holds at most the directory's files. */
  keepOnly(files: readonly string[]): void {
    const present = new Set(files);
    for (const file of this.files.keys()) {
      if (present.has(file)) continue;
      this.files.delete(file);
      this.changed = true;
    }
  }

  /**
   * What a later process may restore (fromSaved): the files whose every
   * document is valid, with their text and the manifests checking it gave.
   * A file with an error is left out, so its errors are always found afresh.
   */
  toSaved(): SavedManifestCache {
    const files: SavedManifestCache['files'] = {};
    for (const [file, entry] of this.files) {
      if (!entry.checked.every((d) => d.errors.length === 0 && d.manifest !== undefined)) continue;
      files[file] = {
        text: entry.text,
        maxQueues: entry.maxQueues,
        documents: entry.checked.map((d) => ({ keys: d.keys, manifest: d.manifest! })),
      };
    }
    return { files };
  }

  /**
   * A cache restored from toSaved()'s result, as another process wrote it.
   * Its documents are those checking the same text gave then; one is
   * parsed again only if an error must point into it (a duplicate name or
   * id across files). Undefined when `saved` is not what toSaved gives.
   */
  static fromSaved(saved: unknown): ManifestCache | undefined {
    if (!isSavedCache(saved)) return undefined;
    const cache = new ManifestCache();
    for (const [file, entry] of Object.entries(saved.files)) {
      let parsed: CheckedDocument[] | undefined;
      const reparse = (i: number): DocumentContext => {
        parsed ??= parseAgain(file, entry.text, { maxQueues: entry.maxQueues });
        return parsed[i]!.context();
      };
      const checked = entry.documents.map((d, i): CheckedDocument => ({
        file,
        errors: [],
        manifest: d.manifest,
        keys: d.keys,
        context: () => reparse(i),
      }));
      cache.files.set(file, { text: entry.text, maxQueues: entry.maxQueues, checked });
    }
    return cache;
  }
}

/** A ManifestCache as JSON: per file, its text, the host limit it was checked against, and its valid documents. */
export interface SavedManifestCache {
  files: Record<
    string,
    { text: string; maxQueues: number; documents: Array<{ keys: DocumentKeys; manifest: LoadedManifest }> }
  >;
}

/** The documents of a saved file's text, parsed again; they were valid when saved, from this same text. */
function parseAgain(file: string, text: string, limits: HostLimits): CheckedDocument[] {
  const checked = parseAndCheck(file, text, limits);
  if (!Array.isArray(checked))
    throw new Error(`${file}: a saved manifest cache entry no longer parses: ${checked.message}`);
  return checked;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Whether `v` has the shape toSaved gives (each manifest naming its own file), so nothing read from it is undefined. */
function isSavedCache(v: unknown): v is SavedManifestCache {
  if (!isObject(v) || !isObject(v.files)) return false;
  return Object.entries(v.files).every(([file, entry]) => {
    if (!isObject(entry) || typeof entry.text !== 'string' || !Number.isInteger(entry.maxQueues)) return false;
    if (!Array.isArray(entry.documents)) return false;
    return entry.documents.every((d: unknown) => {
      if (!isObject(d) || !isObject(d.keys) || !isObject(d.manifest)) return false;
      const m = d.manifest;
      return (
        m.file === file &&
        typeof m.name === 'string' &&
        d.keys.name === m.name &&
        Number.isInteger(m.line) &&
        isObject(m.spec) &&
        d.keys.id === m.spec.id &&
        isObject(m.document) &&
        [m.hash, m.legacyHash, m.deviceHash].every((h) => typeof h === 'string' && /^[0-9a-f]{64}$/.test(h))
      );
    });
  });
}

/**
 * Checks the schema cannot express — sizes that parse and fit the block
 * size, this host's CPUs — with the same validators ublkctl and the library use.
 */
function semanticErrors(ctx: DocumentContext, spec: ManifestSpec, limits: HostLimits): ManifestError[] {
  return specProblems(spec, limits).map((p) => ctx.error(['spec', ...p.field.split('.')], p.detail));
}

/**
 * `type: null` names the null target, not YAML's null: users should not
 * need quotes. Only the word does: an empty `type:` (a line cut short, a
 * value forgotten) stays an error.
 */
function nullTargetAsString(ctx: DocumentContext, data: unknown): void {
  const target = (data as { spec?: { target?: { type?: unknown } } } | null)?.spec?.target;
  if (!target || typeof target !== 'object' || !('type' in target) || target.type !== null) return;
  const node = ctx.doc.getIn(['spec', 'target', 'type'], true);
  target.type = isScalar(node) && /^null$/i.test(node.source ?? '') ? 'null' : '';
}

/**
 * Walks a document's nodes without recursion (a hostile file may nest
 * thousands deep) and reports the first node past the nesting or alias limit.
 */
function structureError(ctx: DocumentContext): ManifestError | undefined {
  const stack: Array<{ node: unknown; depth: number }> = [{ node: ctx.doc.contents, depth: 0 }];
  let aliases = 0;
  while (stack.length > 0) {
    const { node, depth } = stack.pop()!;
    if (isAlias(node)) {
      if (++aliases > MAX_ALIASES)
        return locatedAt(ctx, node.range, `more than ${MAX_ALIASES} YAML aliases in one document`);
    } else if (isMap(node) || isSeq(node)) {
      if (depth >= MAX_DEPTH) return locatedAt(ctx, node.range, `nested more than ${MAX_DEPTH} levels deep`);
      for (const item of node.items) {
        if (isPair(item)) {
          stack.push({ node: item.key, depth: depth + 1 });
          stack.push({ node: item.value, depth: depth + 1 });
        } else {
          stack.push({ node: item, depth: depth + 1 });
        }
      }
    }
  }
  return undefined;
}

function locatedAt(ctx: DocumentContext, range: readonly number[] | null | undefined, message: string): ManifestError {
  const at = range ? ctx.position(range[0]!) : ctx.start();
  return { file: ctx.file, ...at, path: '', message, manifestName: ctx.name };
}

function sha256(text: string): string {
  return crypto.createHash('sha256').update(text).digest('hex');
}

/** What checkDocument found in one document: a manifest when it is valid, errors otherwise. */
interface DocumentCheck {
  ctx: DocumentContext;
  errors: ManifestError[];
  manifest?: LoadedManifest;
}

/** The values two documents of a directory must not share (checked across files on every load). */
export interface DocumentKeys {
  /** metadata.name as the YAML gives it (not necessarily a string). */
  name: unknown;
  /** spec.id as the YAML gives it. */
  id: unknown;
}

/** One document of a file after both checks: a manifest when it is valid, errors otherwise. */
export interface CheckedDocument {
  file: string;
  errors: ManifestError[];
  manifest?: LoadedManifest;
  keys: DocumentKeys;
  /**
   * The document's YAML, to point an error at one of its nodes. A document
   * from a saved cache (ManifestCache.fromSaved) parses its file's text
   * again only when asked: only a duplicate name or id across files does.
   */
  context(): DocumentContext;
}

/** The duplicate-checked fields, where markDuplicates points its errors. */
const NAME_FIELD = ['metadata', 'name'];
const ID_FIELD = ['spec', 'id'];

function checkedDocument(check: DocumentCheck): CheckedDocument {
  const { ctx } = check;
  return {
    file: ctx.file,
    errors: check.errors,
    manifest: check.manifest,
    keys: { name: ctx.doc.getIn(NAME_FIELD), id: ctx.doc.getIn(ID_FIELD) },
    context: () => ctx,
  };
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
      message: `invalid YAML: ${clip(first.message)}`,
      manifestName: ctx.name,
    },
  ];
}

/** Checks one document; undefined for an empty one (a trailing `---`, only comments). */
function checkDocument(ctx: DocumentContext, limits: HostLimits): DocumentCheck | undefined {
  const syntax = syntaxErrors(ctx);
  if (syntax.length > 0) return { ctx, errors: syntax };
  const structure = structureError(ctx);
  if (structure) return { ctx, errors: [structure] };
  let data: unknown;
  try {
    data = ctx.doc.toJS({ maxAliasCount: MAX_ALIAS_EXPANSION });
    if (JSON.stringify(data ?? null).length > MAX_EXPANDED_CHARS) {
      return { ctx, errors: [ctx.error([], `expands to more than ${formatSize(MAX_EXPANDED_CHARS)} (YAML aliases)`)] };
    }
  } catch (err) {
    return { ctx, errors: [ctx.error([], `invalid YAML: ${clip((err as Error).message)}`)] };
  }
  if (data === null || data === undefined) return undefined;
  nullTargetAsString(ctx, data);
  const validate = manifestValidator();
  if (!validate(data)) return { ctx, errors: schemaErrors(ctx, validate.errors ?? []) };
  const semantic = semanticErrors(ctx, data.spec, limits);
  if (semantic.length > 0) return { ctx, errors: semantic };
  // lockMemory, partitionScan, zeroCopy, threadsPerQueue, batchIo and scheduler came later: left out at their
  // defaults, as comparableSpec does, so old hashes still match (zeroCopy: true meant the default then).
  const {
    allowDataLoss: _consent,
    lockMemory,
    partitionScan,
    zeroCopy,
    threadsPerQueue,
    batchIo,
    scheduler,
    ...unlocked
  } = data.spec;
  const asWritten = {
    ...unlocked,
    ...(lockMemory ? { lockMemory } : {}),
    ...(partitionScan === false ? { partitionScan } : {}),
    ...(zeroCopy === false ? { zeroCopy } : {}),
    ...(threadsPerQueue !== undefined && threadsPerQueue > 1 ? { threadsPerQueue } : {}),
    ...(batchIo === true ? { batchIo } : {}),
    ...(scheduler !== undefined && scheduler !== 'none' ? { scheduler } : {}),
  };
  const manifest: LoadedManifest = {
    name: data.metadata.name,
    file: ctx.file,
    line: ctx.start().line,
    spec: data.spec,
    hash: sha256(canonicalJson(comparableSpec(data.spec))),
    legacyHash: sha256(canonicalJson(asWritten)),
    deviceHash: sha256(canonicalJson(comparableDevice(data.spec))),
    document: data,
  };
  return { ctx, errors: [], manifest };
}

/** Every non-empty document of one file, checked on its own; a file-wide problem instead. */
function checkFile(
  dir: string,
  file: string,
  limits: HostLimits,
  cache?: ManifestCache,
): CheckedDocument[] | ManifestError {
  const text = readManifestText(path.join(dir, file), file);
  if (typeof text !== 'string') return text;
  const cached = cache?.get(file, text, limits);
  if (cached) return cached;
  const checked = parseAndCheck(file, text, limits);
  if (Array.isArray(checked)) cache?.set(file, text, limits, checked);
  return checked;
}

function parseAndCheck(file: string, text: string, limits: HostLimits): CheckedDocument[] | ManifestError {
  const lines = new LineCounter();
  const checked: CheckedDocument[] = [];
  let count = 0;
  try {
    const composer = new Composer({ prettyErrors: false });
    for (const doc of composer.compose(new Parser(lines.addNewLine).parse(text)) as Iterable<Document>) {
      const ctx = new DocumentContext(file, doc, lines);
      if (++count > MAX_DOCUMENTS) {
        return { ...ctx.error([], `more than ${MAX_DOCUMENTS} documents in one file`), manifestName: undefined };
      }
      const result = checkDocument(ctx, limits);
      if (result) checked.push(checkedDocument(result));
    }
  } catch (err) {
    return fileError(file, `cannot parse: ${clip((err as Error).message)}`);
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
  field: readonly string[],
  keyOf: (keys: DocumentKeys) => unknown,
  describe: (key: unknown) => string | undefined,
): void {
  const groups = new Map<string, CheckedDocument[]>();
  for (const d of docs) {
    const key = describe(keyOf(d.keys));
    if (key !== undefined) groups.set(key, [...(groups.get(key) ?? []), d]);
  }
  for (const [key, group] of groups) {
    if (group.length < 2) continue;
    for (const d of group) {
      const others = group.filter((o) => o !== d).map((o) => formatPosition(o.context(), field));
      d.errors.push(d.context().error(field, `${key} is also used by ${others.join(', ')}`));
    }
  }
}

function describeName(value: unknown): string | undefined {
  return typeof value === 'string' ? `name ${quote(value)}` : undefined;
}

function describeId(value: unknown): string | undefined {
  return Number.isInteger(value) ? `device id ${value}` : undefined;
}

/** Errors by file, then position, as a compiler lists them; ties keep the schema's order. */
function inFileOrder(errors: ManifestError[], files: string[]): ManifestError[] {
  const rank = new Map(files.map((f, i) => [f, i]));
  return [...errors].sort((a, b) => rank.get(a.file)! - rank.get(b.file)! || a.line - b.line || a.column - b.column);
}

/**
 * The load, one file per step: the synchronous and the asynchronous
 * loader drive the same steps, the latter yielding to the event loop
 * between files so no pass holds it for long.
 */
function* loadSteps(dir: string, opts: LoadOptions): Generator<void, LoadResult> {
  assertDirectory(dir);
  if (opts.checkPermissions) {
    const problem = permissionProblem(dir, 'directory');
    if (problem) return { manifests: [], errors: [fileError(dir, problem)], files: [], validFiles: [] };
  }
  const limits: HostLimits = { maxQueues: opts.maxQueues ?? maxQueues() };
  const files = listManifestFiles(dir);
  const errors: ManifestError[] = [];
  const docs: CheckedDocument[] = [];
  for (const file of files) {
    const problem = opts.checkPermissions ? permissionProblem(path.join(dir, file), 'file') : undefined;
    const checked = problem ? fileError(file, problem) : checkFile(dir, file, limits, opts.cache);
    if (Array.isArray(checked)) docs.push(...checked);
    else errors.push(checked);
    yield;
  }
  opts.cache?.keepOnly(files);
  markDuplicates(docs, NAME_FIELD, (k) => k.name, describeName);
  markDuplicates(docs, ID_FIELD, (k) => k.id, describeId);
  const manifests: LoadedManifest[] = [];
  const invalidFiles = new Set(errors.map((e) => e.file));
  for (const d of docs) {
    errors.push(...d.errors);
    if (d.manifest && d.errors.length === 0) manifests.push(d.manifest);
    else invalidFiles.add(d.file);
  }
  const withDocuments = new Set(docs.map((d) => d.file));
  const validFiles = files.filter((f) => withDocuments.has(f) && !invalidFiles.has(f));
  return { manifests, errors: inFileOrder(errors, files), files, validFiles };
}

/**
 * Loads every manifest in `dir` (not recursive). Returns the valid
 * manifests with defaults applied and an error for each problem; a
 * document with errors, or whose name or fixed id is claimed twice, is
 * left out of `manifests`. Throws only when `dir` is missing or not a
 * directory (an environment error, not a manifest error).
 */
export function loadManifestDir(dir: string, opts: LoadOptions = {}): LoadResult {
  const steps = loadSteps(dir, opts);
  for (;;) {
    const step = steps.next();
    if (step.done) return step.value;
  }
}

/** `loadManifestDir`, yielding to the event loop after each file: what a pass uses. */
export async function loadManifestDirAsync(dir: string, opts: LoadOptions = {}): Promise<LoadResult> {
  const steps = loadSteps(dir, opts);
  for (;;) {
    const step = steps.next();
    if (step.done) return step.value;
    await new Promise<void>((resolve) => setImmediate(resolve));
  }
}
