import { strict as assert } from 'node:assert';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { DEFAULTS, MAX_DEPTH, maxQueues, RECOVERY_MODES, TARGET_TYPES } from '../../src/spec/device-spec';
import { IO_SCHEDULERS, IO_SIZE, IoScheduler } from '../../src/spec/limits';
import {
  closest,
  DirectIoMode,
  formatManifestError,
  isManifestFile,
  JsTarget,
  loadManifestDir,
  LoadResult,
  LogicalBlockSize,
  LoopTarget,
  ManifestMetadata,
  manifestReference,
  ManifestSpec,
  ManifestTarget,
  MemoryTarget,
  NullTarget,
  RecoveryMode,
  schemaDocument,
  UblkDeviceManifest,
} from '../../src/manifest';

const ROOT = path.resolve(__dirname, '..', '..', '..');
const FIXTURES = path.join(ROOT, 'test', 'fixtures', 'manifests');

const tempDirs: string[] = [];

function tempDir(files: Record<string, string>): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ublk-ts-manifests-'));
  tempDirs.push(dir);
  fs.chmodSync(dir, 0o755);
  for (const [name, text] of Object.entries(files)) {
    fs.writeFileSync(path.join(dir, name), text);
    fs.chmodSync(path.join(dir, name), 0o644);
  }
  return dir;
}

function manifest(name: string, spec: string): string {
  return `apiVersion: ublk-ts/v1\nkind: UblkDevice\nmetadata:\n  name: ${name}\nspec:\n${spec.replace(/^/gm, '  ')}\n`;
}

function errorsIn(result: LoadResult, file: string): string[] {
  return result.errors.filter((e) => e.file === file).map(formatManifestError);
}

after(() => {
  for (const dir of tempDirs) fs.rmSync(dir, { recursive: true, force: true });
});

describe('manifest loading: invalid manifests', () => {
  const invalid = loadManifestDir(path.join(FIXTURES, 'invalid'), { maxQueues: 32 });

  it('points every schema error at its node and says what was expected and what was given', () => {
    assert.deepEqual(errorsIn(invalid, 'schema.yaml'), [
      'schema.yaml:8:11: spec.target.file: must be an absolute path, got "data.img"',
      'schema.yaml:9:3: spec.qeues: unknown field "qeues": did you mean "queues"?',
      'schema.yaml:10:10: spec.depth: must be at most 4096, got 5000',
      'schema.yaml:11:13: spec.recovery: must be one of reissue, fail-inflight, fail-io, none, got "sometimes"',
      'schema.yaml:12:3: spec.colour: unknown field "colour"',
      'schema.yaml:17:9: metadata.name: must be lowercase letters, digits and \'-\', 1 to 63 characters, starting and ending with a letter or digit, got "Bad_Name"',
      'schema.yaml:19:18: spec.target.type: must be one of null, memory, loop, js, got "nbd"',
      'schema.yaml:20:9: spec.size: must be bytes, or a number with B, KiB, MiB, GiB or TiB (e.g. 10GiB), got "10GB"',
      'schema.yaml:29:11: spec.queues: must be a whole number, got "two"',
      'schema.yaml:30:13: spec.readOnly: must be true or false, got "yes please"',
      'schema.yaml:31:21: spec.logicalBlockSize: must be one of 512, 1024, 2048, 4096, got 1000',
      'schema.yaml:32:7: spec.id: must be at most 1048575, got 1048576',
      'schema.yaml:39:3: spec.size: is required for the memory target',
      'schema.yaml:41:10: spec.depth: must be at least 1, got 0',
      'schema.yaml:43:13: apiVersion: must be "ublk-ts/v1", got "ublk-ts/v2"',
      'schema.yaml:44:7: kind: must be "UblkDevice", got "BlockDevice"',
      'schema.yaml:47:3: metadata.labels: unknown field "labels"',
      'schema.yaml:51:13: spec.target.module: must be an absolute path, got "./kv.js"',
      'schema.yaml:52:5: spec.target.option: unknown field "option": did you mean "options"?',
      'schema.yaml:57:11: metadata.name: is required',
      'schema.yaml:59:11: spec.target.type: is required',
      'schema.yaml:66:52: spec.target.directIo: must be one of auto, true, false, got "sometimes"',
      'schema.yaml:66:71: spec.target.create: must be true or false, got "yes"',
      'schema.yaml:67:9: spec.size: must be bytes, or a number with B, KiB, MiB, GiB or TiB (e.g. 10GiB), got a list',
      'schema.yaml:72:9: metadata.name: must be at most 63 characters, got 69 characters',
      'schema.yaml:74:11: spec.target: must be a mapping, got "loop"',
      'schema.yaml:76:1: must be a mapping, got a list',
    ]);
  });

  it('ties each error to its manifest by name, so the reconciler leaves that device alone', () => {
    const qeues = invalid.errors.find((e) => e.path === 'spec.qeues')!;
    assert.deepEqual(qeues, {
      file: 'schema.yaml',
      line: 9,
      column: 3,
      path: 'spec.qeues',
      message: 'unknown field "qeues": did you mean "queues"?',
      manifestName: 'scratch0',
    });
    assert.equal(invalid.errors.find((e) => e.message === 'must be a mapping, got a list')!.manifestName, undefined);
  });

  it('checks what the schema cannot: sizes, the logical block size, the queue limit', () => {
    assert.deepEqual(errorsIn(invalid, 'semantic.yaml'), [
      'semantic.yaml:7:9: spec.size: must be a multiple of the logical block size (512), got 1000',
      'semantic.yaml:8:11: spec.queues: must be between 1 and 32, got 64',
      'semantic.yaml:9:14: spec.maxIoSize: must be a multiple of 4KiB between 4KiB and 32MiB, got 6144',
      'semantic.yaml:17:9: spec.size: must be a whole number of bytes, got "0.3KiB"',
      'semantic.yaml:18:14: spec.maxIoSize: must be a multiple of 4KiB between 4KiB and 32MiB, got 67108864',
      'semantic.yaml:26:9: spec.size: must be greater than 0, got "0GiB"',
      'semantic.yaml:35:9: spec.size: must be a multiple of the logical block size (1024), got 1536',
    ]);
  });

  it("limits queues to the host's CPUs by default", () => {
    const dir = tempDir({ 'q.yaml': manifest('q', 'target: {type: null}\nsize: 1MiB\nqueues: 4097') });
    assert.deepEqual(loadManifestDir(dir).errors.map(formatManifestError), [
      `q.yaml:8:11: spec.queues: must be between 1 and ${maxQueues()}, got 4097`,
    ]);
  });

  it("reports YAML syntax errors at the parser's position and still loads the other documents", () => {
    assert.deepEqual(errorsIn(invalid, 'syntax.yaml'), [
      'syntax.yaml:6:1: invalid YAML: Flow sequence in block collection must be sufficiently indented and end with a ]',
      'syntax.yaml:11:3: invalid YAML: Map keys must be unique',
    ]);
    assert.ok(invalid.manifests.some((m) => m.name === 'survivor' && m.file === 'syntax.yaml' && m.line === 16));
  });

  it('makes a duplicate name or fixed id an error on every manifest involved, naming the others', () => {
    assert.deepEqual(
      [...errorsIn(invalid, 'dup-a.yaml'), ...errorsIn(invalid, 'dup-b.yaml')],
      [
        'dup-a.yaml:4:9: metadata.name: name "shared" is also used by dup-b.yaml:4:9',
        'dup-a.yaml:6:7: spec.id: device id 7 is also used by dup-b.yaml:14:7',
        'dup-b.yaml:4:9: metadata.name: name "shared" is also used by dup-a.yaml:4:9',
        'dup-b.yaml:14:7: spec.id: device id 7 is also used by dup-a.yaml:6:7',
      ],
    );
    const names = invalid.errors.filter((e) => e.file.startsWith('dup-')).map((e) => e.manifestName);
    assert.deepEqual(names, ['shared', 'shared', 'shared', 'other-name']);
  });

  it('counts a duplicate even when the other document is invalid', () => {
    const dir = tempDir({
      'a.yaml': manifest('same', 'target: {type: null}\nsize: 1MiB'),
      'b.yaml': manifest('same', 'target: {type: null}'),
    });
    const result = loadManifestDir(dir);
    assert.deepEqual(result.manifests, []);
    assert.deepEqual(result.errors.map(formatManifestError), [
      'a.yaml:4:9: metadata.name: name "same" is also used by b.yaml:4:9',
      'b.yaml:4:9: metadata.name: name "same" is also used by a.yaml:4:9',
      'b.yaml:6:3: spec.size: is required for the null target',
    ]);
  });

  it('keeps only the valid, unique manifests', () => {
    assert.deepEqual(
      invalid.manifests.map((m) => m.name),
      ['own-name', 'survivor'],
    );
    assert.deepEqual(invalid.files, ['dup-a.yaml', 'dup-b.yaml', 'schema.yaml', 'semantic.yaml', 'syntax.yaml']);
  });
});

describe('manifest loading: valid manifests', () => {
  const valid = loadManifestDir(path.join(FIXTURES, 'valid'));

  it('loads several documents per file and ignores empty documents', () => {
    assert.deepEqual(valid.errors, []);
    assert.deepEqual(valid.files, ['comments-only.yaml', 'loop.yml', 'two-docs.yaml']);
    assert.deepEqual(
      valid.manifests.map((m) => [m.name, m.file, m.line]),
      [
        ['loop0', 'loop.yml', 2],
        ['first', 'two-docs.yaml', 2],
        ['second', 'two-docs.yaml', 10],
      ],
    );
  });

  it("applies the schema's defaults, and reads `type: null` as the null target", () => {
    const [loop, first, second] = valid.manifests;
    assert.deepEqual(first!.spec, {
      target: { type: 'null' },
      size: '64MiB',
      queues: 1,
      depth: 128,
      maxIoSize: '512KiB',
      logicalBlockSize: 512,
      readOnly: false,
      lockMemory: false,
      partitionScan: true,
      threadsPerQueue: 1,
      batchIo: false,
      scheduler: 'none',
      recovery: 'reissue',
      allowDataLoss: false,
    });
    assert.deepEqual(loop!.spec.target, { type: 'loop', file: '/srv/disk.img', create: false, directIo: 'auto' });
    assert.equal(loop!.spec.size, undefined, "a loop device may take its file's size");
    assert.deepEqual(second!.spec.target, {
      type: 'js',
      module: '/opt/targets/kv.js',
      options: { endpoint: '127.0.0.1:6000' },
    });
    assert.deepEqual(second!.document.metadata, { name: 'second' });
    assert.equal(second!.document.spec, second!.spec);
  });

  it("defaults a js target's options to {}", () => {
    const dir = tempDir({ 'js.yaml': manifest('js', 'target: {type: js, module: /opt/t.js}\nsize: 1MiB') });
    assert.deepEqual(loadManifestDir(dir).manifests[0]!.spec.target, { type: 'js', module: '/opt/t.js', options: {} });
  });

  it('hashes the canonical JSON of the normalized spec: key order, units and spelled-out defaults do not matter', () => {
    const dir = tempDir({
      'a.yaml': manifest('a', 'target: {type: null}\nsize: 1MiB'),
      'b.yaml': manifest('b', 'size: 1048576\nqueues: 1\nmaxIoSize: 524288\ntarget: {type: null}'),
      'c.yaml': manifest('c', 'target: {type: null}\nsize: 2MiB'),
      'd.yaml': manifest('d', 'target: {type: null}\nsize: 1024KiB\nallowDataLoss: true\nrecovery: reissue'),
    });
    const [a, b, c, d] = loadManifestDir(dir).manifests;
    const canonical =
      '{"depth":128,"logicalBlockSize":512,"maxIoSize":524288,"queues":1,"readOnly":false,"recovery":"reissue","size":1048576,"target":{"type":"null"}}';
    assert.equal(a!.hash, crypto.createHash('sha256').update(canonical).digest('hex'));
    assert.equal(b!.hash, a!.hash);
    assert.equal(d!.hash, a!.hash, 'allowDataLoss is consent, not identity');
    assert.notEqual(c!.hash, a!.hash);
    const legacy =
      '{"depth":128,"logicalBlockSize":512,"maxIoSize":"512KiB","queues":1,"readOnly":false,"recovery":"reissue","size":"1MiB","target":{"type":"null"}}';
    assert.equal(a!.legacyHash, crypto.createHash('sha256').update(legacy).digest('hex'));
  });

  it('lockMemory is identity only when set: hashes of manifests without it stay what they were', () => {
    const dir = tempDir({
      'a.yaml': manifest('a', 'target: {type: null}\nsize: 1MiB'),
      'b.yaml': manifest('b', 'target: {type: null}\nsize: 1MiB\nlockMemory: false'),
      'c.yaml': manifest('c', 'target: {type: null}\nsize: 1MiB\nlockMemory: true'),
    });
    const [a, b, c] = loadManifestDir(dir).manifests;
    assert.equal(b!.hash, a!.hash);
    assert.equal(b!.legacyHash, a!.legacyHash);
    assert.notEqual(c!.hash, a!.hash, 'turning it on needs a new server');
  });

  it('partitionScan is identity only when false: hashes of manifests without it stay what they were', () => {
    const dir = tempDir({
      'a.yaml': manifest('a', 'target: {type: null}\nsize: 1MiB'),
      'b.yaml': manifest('b', 'target: {type: null}\nsize: 1MiB\npartitionScan: true'),
      'c.yaml': manifest('c', 'target: {type: null}\nsize: 1MiB\npartitionScan: false'),
      'd.yaml': manifest('d', 'target: {type: null}\nsize: 1MiB\npartitionScan: "no"'),
    });
    const { manifests, errors } = loadManifestDir(dir);
    const [a, b, c] = manifests;
    assert.equal(b!.hash, a!.hash);
    assert.equal(b!.legacyHash, a!.legacyHash);
    assert.notEqual(c!.hash, a!.hash, 'turning the scan off needs a new device');
    assert.equal(errors.length, 1);
    assert.equal(errors[0]!.path, 'spec.partitionScan');
  });

  it('threadsPerQueue is identity only above 1: hashes of manifests without it stay what they were', () => {
    const dir = tempDir({
      'a.yaml': manifest('a', 'target: {type: null}\nsize: 1MiB'),
      'b.yaml': manifest('b', 'target: {type: null}\nsize: 1MiB\nthreadsPerQueue: 1'),
      'c.yaml': manifest('c', 'target: {type: null}\nsize: 1MiB\nthreadsPerQueue: 2'),
      'd.yaml': manifest('d', 'target: {type: null}\nsize: 1MiB\ndepth: 4\nthreadsPerQueue: 5'),
      'e.yaml': manifest('e', 'target: {type: js, module: /etc/passwd}\nsize: 1MiB\nthreadsPerQueue: 2'),
      'f.yaml': manifest('f', 'target: {type: null}\nsize: 1MiB\nthreadsPerQueue: 0'),
    });
    const { manifests, errors } = loadManifestDir(dir);
    const [a, b, c] = manifests;
    assert.equal(manifests.length, 3);
    assert.equal(b!.hash, a!.hash);
    assert.equal(b!.legacyHash, a!.legacyHash);
    assert.equal(b!.deviceHash, a!.deviceHash);
    assert.notEqual(c!.hash, a!.hash, 'more threads need a device made with PER_IO_DAEMON');
    assert.notEqual(c!.deviceHash, a!.deviceHash, 'so no handover applies it');
    const byFile = (name: string) => errors.find((e) => e.file.endsWith(name));
    assert.equal(byFile('d.yaml')?.path, 'spec.threadsPerQueue');
    assert.match(byFile('d.yaml')!.message, /must be between 1 and 4, got 5 \(at most depth: a tag per thread\)/);
    assert.equal(byFile('e.yaml')?.path, 'spec.threadsPerQueue');
    assert.match(byFile('e.yaml')!.message, /must be 1 for a js target \(each queue is served by one worker\), got 2/);
    assert.equal(byFile('f.yaml')?.path, 'spec.threadsPerQueue');
  });

  it('batchIo is identity only when true; refused for js targets and with several threads per queue', () => {
    const dir = tempDir({
      'a.yaml': manifest('a', 'target: {type: null}\nsize: 1MiB'),
      'b.yaml': manifest('b', 'target: {type: null}\nsize: 1MiB\nbatchIo: false'),
      'c.yaml': manifest('c', 'target: {type: null}\nsize: 1MiB\nbatchIo: true'),
      'd.yaml': manifest('d', 'target: {type: js, module: /etc/passwd}\nsize: 1MiB\nbatchIo: true'),
      'e.yaml': manifest('e', 'target: {type: null}\nsize: 1MiB\nbatchIo: true\nthreadsPerQueue: 2'),
    });
    const { manifests, errors } = loadManifestDir(dir);
    const [a, b, c] = manifests;
    assert.equal(manifests.length, 3);
    assert.equal(b!.hash, a!.hash);
    assert.equal(b!.legacyHash, a!.legacyHash);
    assert.notEqual(c!.deviceHash, a!.deviceHash, 'batch IO is chosen at ADD_DEV: a change re-creates');
    const byFile = (name: string) => errors.find((e) => e.file.endsWith(name));
    assert.equal(byFile('d.yaml')?.path, 'spec.batchIo');
    assert.match(byFile('d.yaml')!.message, /must be false for a js target/);
    assert.equal(byFile('e.yaml')?.path, 'spec.batchIo');
    assert.match(
      byFile('e.yaml')!.message,
      /cannot be true with threadsPerQueue 2: a batch device has one thread per queue/,
    );
  });

  it('normalizes loop paths and target defaults before hashing', () => {
    const dir = tempDir({
      'a.yaml': manifest('a', 'target: {type: loop, file: /srv//disk.img}'),
      'b.yaml': manifest('b', 'target: {type: loop, file: /srv/./disk.img, create: false, directIo: auto}'),
    });
    const [a, b] = loadManifestDir(dir).manifests;
    assert.equal(a!.hash, b!.hash);
  });
});

describe('manifest loading: the directory', () => {
  it('reads only *.yaml and *.yml: hidden, swap and backup files and directories are ignored', () => {
    const dir = tempDir({
      'a.yaml': manifest('a', 'target: {type: null}\nsize: 1MiB'),
      'b.yml': manifest('b', 'target: {type: memory}\nsize: 1MiB'),
      '.hidden.yaml': 'not: [valid',
      '.a.yaml.swp': 'garbage',
      '.a.yaml.swx': 'garbage',
      'a.yaml~': 'garbage',
      'a.yaml.bak': 'garbage',
      '#a.yaml#': 'garbage',
      'notes.txt': 'hello',
      README: 'hello',
    });
    fs.mkdirSync(path.join(dir, 'sub.yaml'));
    const result = loadManifestDir(dir);
    assert.deepEqual(result.errors, []);
    assert.deepEqual(result.files, ['a.yaml', 'b.yml']);
    assert.deepEqual(
      result.manifests.map((m) => m.name),
      ['a', 'b'],
    );
  });

  it('names manifest files by their extension alone', () => {
    assert.deepEqual(['x.yaml', 'x.yml', 'x.YAML', '.x.yaml', 'x.yaml.swp', 'x.yaml~', 'x.json'].map(isManifestFile), [
      true,
      true,
      false,
      false,
      false,
      false,
      false,
    ]);
  });

  it('follows links to files, and reports a dangling one without stopping the others', () => {
    const dir = tempDir({ 'real.yaml': manifest('real', 'target: {type: null}\nsize: 1MiB') });
    const elsewhere = tempDir({ 'target.yaml': manifest('linked', 'target: {type: null}\nsize: 1MiB') });
    fs.symlinkSync(path.join(elsewhere, 'target.yaml'), path.join(dir, 'linked.yaml'));
    fs.symlinkSync(path.join(elsewhere, 'gone.yaml'), path.join(dir, 'dangling.yaml'));
    const result = loadManifestDir(dir);
    assert.deepEqual(
      result.manifests.map((m) => m.name),
      ['linked', 'real'],
    );
    assert.equal(result.errors.length, 1);
    assert.match(formatManifestError(result.errors[0]!), /^dangling\.yaml: cannot read: ENOENT/);
  });

  it('throws for a missing directory or a file in its place', () => {
    assert.throws(
      () => loadManifestDir('/nonexistent/ublk.d'),
      /^Error: manifest directory \/nonexistent\/ublk\.d does not exist$/,
    );
    const dir = tempDir({ 'file.yaml': '' });
    assert.throws(() => loadManifestDir(path.join(dir, 'file.yaml')), /is not a directory$/);
  });
});

describe('manifest loading: permissions', () => {
  const ok = (name: string): string => manifest(name, 'target: {type: null}\nsize: 1MiB');

  beforeEach(function () {
    if (process.getuid?.() !== 0) this.skip();
  });

  it('refuses a file writable by group/others, loading the rest', () => {
    const dir = tempDir({ 'loose.yaml': ok('loose'), 'tight.yaml': ok('tight') });
    fs.chmodSync(path.join(dir, 'loose.yaml'), 0o664);
    const strict = loadManifestDir(dir, { checkPermissions: true });
    assert.deepEqual(
      strict.manifests.map((m) => m.name),
      ['tight'],
    );
    assert.deepEqual(strict.errors, [
      {
        file: 'loose.yaml',
        line: 0,
        column: 0,
        path: '',
        message:
          'refusing file writable by group/others (mode 0664); fix with chmod go-w, or pass --insecure-permissions',
      },
    ]);
    assert.equal(
      formatManifestError(strict.errors[0]!),
      'loose.yaml: refusing file writable by group/others (mode 0664); fix with chmod go-w, or pass --insecure-permissions',
    );
  });

  it('refuses a file not owned by root', () => {
    const dir = tempDir({ 'theirs.yaml': ok('theirs') });
    fs.chownSync(path.join(dir, 'theirs.yaml'), 1000, 1000);
    assert.deepEqual(loadManifestDir(dir, { checkPermissions: true }).errors.map(formatManifestError), [
      'theirs.yaml: refusing file owned by uid 1000, not root; fix with chown root, or pass --insecure-permissions',
    ]);
  });

  it('refuses a directory writable by group/others, loading nothing', () => {
    const dir = tempDir({ 'fine.yaml': ok('fine') });
    fs.chmodSync(dir, 0o775);
    const result = loadManifestDir(dir, { checkPermissions: true });
    assert.deepEqual(result, {
      manifests: [],
      files: [],
      validFiles: [],
      errors: [
        {
          file: dir,
          line: 0,
          column: 0,
          path: '',
          message:
            'refusing directory writable by group/others (mode 0775); fix with chmod go-w, or pass --insecure-permissions',
        },
      ],
    });
  });

  it('checks nothing without checkPermissions', () => {
    const dir = tempDir({ 'loose.yaml': ok('loose'), 'theirs.yaml': ok('theirs') });
    fs.chmodSync(path.join(dir, 'loose.yaml'), 0o666);
    fs.chownSync(path.join(dir, 'theirs.yaml'), 1000, 1000);
    fs.chmodSync(dir, 0o777);
    const result = loadManifestDir(dir, { checkPermissions: false });
    assert.deepEqual(result.errors, []);
    assert.deepEqual(
      result.manifests.map((m) => m.name),
      ['loose', 'theirs'],
    );
  });
});

describe('manifest error format', () => {
  it('prints file:line:column: path: message, leaving out what is unknown', () => {
    const base = { file: 'data.yaml', line: 7, column: 12, path: 'spec.queues', message: 'must be at most 32, got 64' };
    assert.equal(formatManifestError(base), 'data.yaml:7:12: spec.queues: must be at most 32, got 64');
    assert.equal(formatManifestError({ ...base, path: '' }), 'data.yaml:7:12: must be at most 32, got 64');
    assert.equal(
      formatManifestError({ ...base, line: 0, column: 0, path: '' }),
      'data.yaml: must be at most 32, got 64',
    );
  });

  it('suggests a field name only within edit distance 2', () => {
    assert.equal(closest('qeues', ['queues', 'depth']), 'queues');
    assert.equal(closest('Depht', ['queues', 'depth']), 'depth');
    assert.equal(closest('colour', ['queues', 'depth']), undefined);
  });
});

/** Keys of T that are not optional: compared with the schema's `required`. */
type RequiredKeys<T> = { [K in keyof T]-?: object extends Pick<T, K> ? never : K }[keyof T];

interface SchemaObject {
  properties: Record<string, { description?: string; enum?: unknown[] }>;
  required?: string[];
}

function sorted(values: readonly unknown[]): string[] {
  return values.map(String).sort();
}

describe('manifest schema and TypeScript types', () => {
  const top = schemaDocument as SchemaObject;
  const spec = schemaDocument.properties.spec as SchemaObject;
  const branches = schemaDocument.properties.spec.properties.target.oneOf as SchemaObject[];
  const branch = (type: string): SchemaObject =>
    branches.find((b) => (b.properties.type as { const?: string }).const === type)!;

  it('has the same fields, and the same required fields, as the types', () => {
    const cases: [string, SchemaObject, Record<string, true>, Record<string, true>][] = [
      [
        'manifest',
        top,
        { apiVersion: true, kind: true, metadata: true, spec: true } satisfies Record<keyof UblkDeviceManifest, true>,
        { apiVersion: true, kind: true, metadata: true, spec: true } satisfies Record<
          RequiredKeys<UblkDeviceManifest>,
          true
        >,
      ],
      [
        'metadata',
        schemaDocument.properties.metadata,
        { name: true } satisfies Record<keyof ManifestMetadata, true>,
        { name: true } satisfies Record<RequiredKeys<ManifestMetadata>, true>,
      ],
      [
        'spec',
        spec,
        {
          id: true,
          target: true,
          size: true,
          queues: true,
          depth: true,
          maxIoSize: true,
          logicalBlockSize: true,
          readOnly: true,
          lockMemory: true,
          partitionScan: true,
          zeroCopy: true,
          threadsPerQueue: true,
          batchIo: true,
          scheduler: true,
          recovery: true,
          allowDataLoss: true,
        } satisfies Record<keyof ManifestSpec, true>,
        { target: true } satisfies Record<RequiredKeys<ManifestSpec>, true>,
      ],
      [
        'null target',
        branch('null'),
        { type: true } satisfies Record<keyof NullTarget, true>,
        { type: true } satisfies Record<RequiredKeys<NullTarget>, true>,
      ],
      [
        'memory target',
        branch('memory'),
        { type: true } satisfies Record<keyof MemoryTarget, true>,
        { type: true } satisfies Record<RequiredKeys<MemoryTarget>, true>,
      ],
      [
        'loop target',
        branch('loop'),
        { type: true, file: true, create: true, directIo: true } satisfies Record<keyof LoopTarget, true>,
        { type: true, file: true } satisfies Record<RequiredKeys<LoopTarget>, true>,
      ],
      [
        'js target',
        branch('js'),
        { type: true, module: true, options: true } satisfies Record<keyof JsTarget, true>,
        { type: true, module: true } satisfies Record<RequiredKeys<JsTarget>, true>,
      ],
    ];
    for (const [where, schema, keys, required] of cases) {
      assert.deepEqual(sorted(Object.keys(schema.properties)), sorted(Object.keys(keys)), `${where}: fields`);
      // A target's `type` is required once, on spec.target, where the discriminator reads it.
      const schemaRequired = where.endsWith('target') ? [...(schema.required ?? []), 'type'] : (schema.required ?? []);
      assert.deepEqual(sorted(schemaRequired), sorted(Object.keys(required)), `${where}: required fields`);
    }
  });

  it('has the same enums as the types and the device spec', () => {
    const targetTypes = { null: true, memory: true, loop: true, js: true } satisfies Record<
      ManifestTarget['type'],
      true
    >;
    const recoveryModes = { reissue: true, 'fail-inflight': true, 'fail-io': true, none: true } satisfies Record<
      RecoveryMode,
      true
    >;
    const blockSizes = { 512: true, 1024: true, 2048: true, 4096: true } satisfies Record<LogicalBlockSize, true>;
    const directIo = { auto: true, true: true, false: true } satisfies Record<`${DirectIoMode}`, true>;
    assert.deepEqual(
      branches.map((b) => (b.properties.type as { const?: string }).const),
      Object.keys(targetTypes),
    );
    assert.deepEqual(
      branches.map((b) => (b.properties.type as { const?: string }).const),
      [...TARGET_TYPES],
    );
    assert.deepEqual(spec.properties.recovery!.enum, Object.keys(recoveryModes));
    assert.deepEqual(spec.properties.recovery!.enum, [...RECOVERY_MODES]);
    assert.deepEqual(sorted(spec.properties.logicalBlockSize!.enum!), sorted(Object.keys(blockSizes)));
    assert.deepEqual(sorted(branch('loop').properties.directIo!.enum!), sorted(Object.keys(directIo)));
    const schedulers = {
      none: true,
      'mq-deadline': true,
      kyber: true,
      bfq: true,
      'kernel-default': true,
    } satisfies Record<IoScheduler, true>;
    assert.deepEqual(spec.properties.scheduler!.enum, Object.keys(schedulers));
    assert.deepEqual(spec.properties.scheduler!.enum, [...IO_SCHEDULERS]);
  });

  it("is where the spec's defaults and limits come from", () => {
    const field = (name: string) => spec.properties[name] as SchemaObject & { default?: unknown; maximum?: number };
    assert.deepEqual(
      {
        queues: DEFAULTS.queues,
        depth: DEFAULTS.depth,
        logicalBlockSize: DEFAULTS.logicalBlockSize,
        recovery: DEFAULTS.recovery,
      },
      {
        queues: field('queues').default,
        depth: field('depth').default,
        logicalBlockSize: field('logicalBlockSize').default,
        recovery: field('recovery').default,
      },
    );
    assert.equal(DEFAULTS.maxIoSize, 512 * 1024);
    assert.equal(MAX_DEPTH, field('depth').maximum);
    assert.deepEqual(IO_SIZE, { minimum: 4096, maximum: 32 * 1024 * 1024, multipleOf: 4096 });
  });

  it('describes every field (the README reference is generated from the descriptions)', () => {
    const fields: [string, { description?: string }][] = [
      ...Object.entries(top.properties),
      ...Object.entries(schemaDocument.properties.metadata.properties as SchemaObject['properties']).map(
        ([k, v]) => [`metadata.${k}`, v] as [string, { description?: string }],
      ),
      ...Object.entries(spec.properties).map(([k, v]) => [`spec.${k}`, v] as [string, { description?: string }]),
      ...branches.flatMap((b) =>
        Object.entries(b.properties).map(([k, v]) => [`spec.target.${k}`, v] as [string, { description?: string }]),
      ),
    ];
    for (const [name, field] of fields) assert.ok(field.description, `${name} has a description`);
  });
});

describe('shipped manifests', () => {
  it('every manifest in manifests/ is valid', () => {
    const result = loadManifestDir(path.join(ROOT, 'manifests'));
    assert.deepEqual(result.errors.map(formatManifestError), []);
    assert.deepEqual(result.files, ['loop-data.yaml', 'memory-cache.yaml', 'null-scratch.yaml']);
    assert.deepEqual(
      result.manifests.map((m) => [m.name, m.spec.target.type]),
      [
        ['loop-data', 'loop'],
        ['memory-cache', 'memory'],
        ['null-scratch', 'null'],
      ],
    );
  });
});

describe('README manifest reference', () => {
  it('is the one generated from the schema', () => {
    const readme = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8');
    const m = /<!-- manifest-reference:start -->\n([\s\S]*?)\n<!-- manifest-reference:end -->/.exec(readme);
    assert.ok(m, 'README has the reference markers');
    assert.equal(m[1], manifestReference(), 'run npm run docs:manifest and paste its output into the README');
  });
});
