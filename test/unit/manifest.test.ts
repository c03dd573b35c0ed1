import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { RECOVERY_MODES, TARGET_TYPES } from '../../src/device-spec';
import { closest, formatManifestError, loadManifestDir, ManifestSpec, manifestReference, schemaDocument } from '../../src/manifest';

const ROOT = path.resolve(__dirname, '..', '..', '..');
const FIXTURES = path.join(ROOT, 'test', 'fixtures', 'manifests');

function errorsOf(dir: string): string[] {
  return loadManifestDir(dir).errors.map(formatManifestError);
}

function tempDir(files: Record<string, string>): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ublk-ts-manifests-'));
  fs.chmodSync(dir, 0o755);
  for (const [name, text] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), text, { mode: 0o644 });
  return dir;
}

const doc = (name: string, spec: string): string =>
  `apiVersion: ublk-ts/v1\nkind: UblkDevice\nmetadata:\n  name: ${name}\nspec:\n${spec}\n`;

describe('manifest loading', () => {
  it('names file, line, column, field and what was expected for every schema error', () => {
    const errors = errorsOf(path.join(FIXTURES, 'invalid')).filter((e) => e.startsWith('errors.yaml'));
    assert.deepEqual(errors, [
      'errors.yaml:9:3: spec.qeues: unknown field "qeues": did you mean "queues"?',
      'errors.yaml:8:11: spec.target.file: must be an absolute path, got "data.img"',
      'errors.yaml:10:10: spec.depth: must be at most 4096, got 5000',
      'errors.yaml:11:13: spec.recovery: must be one of reissue, fail-inflight, fail-io, none, got "sometimes"',
      'errors.yaml:16:9: metadata.name: must be lowercase letters, digits and \'-\', 1 to 63 characters, starting and ending with a letter or digit, got "Bad_Name"',
      'errors.yaml:18:18: spec.target.type: must be one of null, memory, loop, js, got "nbd"',
      'errors.yaml:19:9: spec.size: must be bytes, or a number with B, KiB, MiB, GiB or TiB (e.g. 10GiB), got "10GB"',
      'errors.yaml:28:11: spec.queues: must be a whole number, got "two"',
      'errors.yaml:35:3: spec.size: is required for this target type',
      'errors.yaml:37:13: spec.readOnly: must be true or false, got "yes please"',
    ]);
  });

  it('checks what the schema cannot: sizes against the block size, queues against this host', () => {
    const errors = errorsOf(path.join(FIXTURES, 'invalid')).filter((e) => e.startsWith('semantic.yaml'));
    assert.equal(errors[0], 'semantic.yaml:7:9: spec.size: must be a multiple of the logical block size (512), got 1000');
    assert.match(errors[1]!, /^semantic\.yaml:8:11: spec\.queues: must be at most \d+ \(CPUs on this host\), got 4096$/);
  });

  it('reports YAML syntax errors at their position and keeps loading other documents', () => {
    const errors = errorsOf(path.join(FIXTURES, 'invalid')).filter((e) => e.startsWith('syntax.yaml'));
    assert.ok(errors.length >= 1);
    assert.match(errors[0]!, /^syntax\.yaml:\d+:\d+: YAML: /);
    assert.doesNotMatch(errors[0]!, /^syntax\.yaml:1:1:/);
  });

  it('loads several documents per file, applies defaults, ignores empty documents', () => {
    const result = loadManifestDir(path.join(FIXTURES, 'valid'));
    assert.deepEqual(result.errors, []);
    assert.deepEqual(result.manifests.map((m) => [m.name, m.file, m.line]), [['first', 'two-docs.yaml', 1], ['second', 'two-docs.yaml', 9]]);
    const first = result.manifests[0]!.spec;
    assert.deepEqual(first, {
      target: { type: 'null' },
      size: '64MiB',
      queues: 1,
      depth: 128,
      maxIoSize: '512KiB',
      logicalBlockSize: 512,
      readOnly: false,
      recovery: 'reissue',
    });
    assert.deepEqual(result.manifests[1]!.spec.target, { type: 'js', module: '/opt/targets/kv.js', options: { endpoint: '127.0.0.1:6000' } });
    assert.match(result.manifests[0]!.hash, /^[0-9a-f]{64}$/);
  });

  it('reads only *.yaml and *.yml: hidden, swap and backup files are ignored', () => {
    const dir = tempDir({
      'a.yaml': doc('a', '  target: {type: null}\n  size: 1MiB'),
      'b.yml': doc('b', '  target: {type: memory}\n  size: 1MiB'),
      '.hidden.yaml': 'not: [valid',
      '.a.yaml.swp': 'garbage',
      'a.yaml~': 'garbage',
      'a.yaml.bak': 'garbage',
      'notes.txt': 'hello',
    });
    fs.mkdirSync(path.join(dir, 'sub.yaml'));
    const result = loadManifestDir(dir);
    assert.deepEqual(result.errors, []);
    assert.deepEqual(result.files, ['a.yaml', 'b.yml']);
    assert.deepEqual(result.manifests.map((m) => m.name), ['a', 'b']);
  });

  it('makes duplicate names and fixed ids an error for every manifest involved', () => {
    const dir = tempDir({
      'one.yaml': doc('same', '  target: {type: null}\n  size: 1MiB\n  id: 4'),
      'two.yaml': doc('same', '  target: {type: null}\n  size: 1MiB'),
      'three.yaml': doc('other', '  target: {type: null}\n  size: 1MiB\n  id: 4'),
      'fine.yaml': doc('fine', '  target: {type: null}\n  size: 1MiB'),
    });
    const result = loadManifestDir(dir);
    assert.deepEqual(result.manifests.map((m) => m.name), ['fine']);
    assert.deepEqual(result.errors.map(formatManifestError).sort(), [
      'one.yaml:4:9: metadata.name: name same is also used by two.yaml:1',
      'one.yaml:8:7: spec.id: device id 4 is also used by three.yaml:1',
      'three.yaml:8:7: spec.id: device id 4 is also used by one.yaml:1',
      'two.yaml:4:9: metadata.name: name same is also used by one.yaml:1',
    ]);
    assert.ok(result.errors.every((e) => e.manifestName !== undefined), 'each error names its manifest');
  });

  it('refuses files and directories writable by group/others, or not owned by root, when asked', function () {
    if (process.getuid?.() !== 0) this.skip();
    const dir = tempDir({ 'loose.yaml': doc('loose', '  target: {type: null}\n  size: 1MiB'), 'tight.yaml': doc('tight', '  target: {type: null}\n  size: 1MiB') });
    fs.chmodSync(path.join(dir, 'loose.yaml'), 0o664);
    const strict = loadManifestDir(dir, { checkPermissions: true });
    assert.deepEqual(strict.manifests.map((m) => m.name), ['tight']);
    assert.match(formatManifestError(strict.errors[0]!), /^loose\.yaml: refusing .*loose\.yaml: writable by group\/others \(mode 0664\); fix with chmod go-w, or pass --insecure-permissions$/);
    assert.equal(strict.errors[0]!.manifestName, undefined);
    assert.equal(loadManifestDir(dir).manifests.length, 2, 'checkPermissions off: both load');
    fs.chownSync(path.join(dir, 'tight.yaml'), 1000, 1000);
    assert.match(loadManifestDir(dir, { checkPermissions: true }).errors.map(formatManifestError).join('\n'), /owned by uid 1000, not root/);
    fs.chmodSync(dir, 0o775);
    const looseDir = loadManifestDir(dir, { checkPermissions: true });
    assert.deepEqual(looseDir.manifests, []);
    assert.match(formatManifestError(looseDir.errors[0]!), /writable by group\/others \(mode 0775\)/);
  });

  it('throws for a missing directory', () => {
    assert.throws(() => loadManifestDir('/nonexistent/ublk.d'), /does not exist/);
  });

  it('suggests only close field names', () => {
    assert.equal(closest('qeues', ['queues', 'depth']), 'queues');
    assert.equal(closest('colour', ['queues', 'depth']), undefined);
  });
});

describe('manifest schema and types', () => {
  const spec = schemaDocument.properties.spec;

  it('has exactly the fields of the ManifestSpec type', () => {
    const typeKeys = {
      id: true,
      target: true,
      size: true,
      queues: true,
      depth: true,
      maxIoSize: true,
      logicalBlockSize: true,
      readOnly: true,
      recovery: true,
    } satisfies Record<keyof ManifestSpec, true>;
    assert.deepEqual(Object.keys(spec.properties).sort(), Object.keys(typeKeys).sort());
  });

  it('lists the same recovery modes and target types as the device spec', () => {
    assert.deepEqual(spec.properties.recovery.enum, [...RECOVERY_MODES]);
    const types = spec.properties.target.oneOf.map((b: { properties: { type: { const: string } } }) => b.properties.type.const);
    assert.deepEqual(types, [...TARGET_TYPES]);
  });

  it('describes every field (the README reference is generated from the descriptions)', () => {
    for (const [name, field] of Object.entries(spec.properties)) {
      assert.ok((field as { description?: string }).description, `spec.${name} has a description`);
    }
  });
});

describe('shipped manifests', () => {
  it('every manifest in manifests/ is valid', () => {
    const result = loadManifestDir(path.join(ROOT, 'manifests'));
    assert.deepEqual(result.errors.map(formatManifestError), []);
    assert.deepEqual(result.manifests.map((m) => m.spec.target.type).sort(), ['loop', 'memory', 'null']);
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
