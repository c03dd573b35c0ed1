/**
 * What a hostile, runaway or half-written manifest file costs the loader:
 * one located error naming the file, never the other manifests, never an
 * unbounded echo of the bad value.
 */
import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { formatManifestError, loadManifestDir, loadManifestDirAsync, LoadResult } from '../../src/manifest';
import { MAX_ALIASES, MAX_DEPTH, MAX_DOCUMENTS, MAX_FILE_BYTES } from '../../src/manifest/file-limits';
import { MAX_SHOWN_CHARS } from '../../src/spec/show-value';

const GOOD =
  'apiVersion: ublk-ts/v1\nkind: UblkDevice\nmetadata:\n  name: good\nspec:\n  target: {type: null}\n  size: 1MiB\n';

function manifest(name: string, spec: string): string {
  return `apiVersion: ublk-ts/v1\nkind: UblkDevice\nmetadata:\n  name: ${name}\nspec:\n${spec.replace(/^/gm, '  ')}\n`;
}

describe('manifest files: limits and hostile content', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ublk-ts-limits-'));
    fs.writeFileSync(path.join(dir, 'good.yaml'), GOOD);
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  function load(file: string, text: string): { result: LoadResult; errors: string[] } {
    fs.writeFileSync(path.join(dir, file), text);
    const result = loadManifestDir(dir, { maxQueues: 4 });
    return { result, errors: result.errors.map(formatManifestError) };
  }

  function assertGoodSurvives(result: LoadResult): void {
    assert.deepEqual(
      result.manifests.map((m) => m.name),
      ['good'],
    );
    assert.deepEqual(result.validFiles, ['good.yaml']);
  }

  it('refuses a file over the size limit without parsing it, naming the file', () => {
    const { result, errors } = load('huge.yaml', `list: [${'1,'.repeat(MAX_FILE_BYTES)}1]\n`);
    assert.equal(errors.length, 1);
    assert.match(errors[0]!, /^huge\.yaml: too large: a manifest file may hold at most 64KiB, this one has \d+ bytes$/);
    assertGoodSurvives(result);
  });

  it('limits YAML aliases per document and their expansion', () => {
    const anchors = Array.from({ length: MAX_ALIASES + 1 }, (_, i) => `  k${i}: *a`).join('\n');
    const { result, errors } = load('alias.yaml', `base: &a [1, 2, 3]\nmore:\n${anchors}\n`);
    assert.equal(errors.length, 1);
    assert.match(errors[0]!, /^alias\.yaml:\d+:\d+: more than 32 YAML aliases in one document$/);
    assertGoodSurvives(result);

    const laughs = ['a: &a [x, x, x, x, x, x, x, x, x, x]'];
    for (let i = 1; i < 9; i++)
      laughs.push(
        `${'abcdefghij'[i]}: &${'abcdefghij'[i]} [*${'abcdefghij'[i - 1]}, *${'abcdefghij'[i - 1]}, *${'abcdefghij'[i - 1]}]`,
      );
    const bomb = load('bomb.yaml', `${laughs.join('\n')}\n`);
    assert.match(
      bomb.errors.find((e) => e.startsWith('bomb.yaml'))!,
      /^bomb\.yaml:1:1: invalid YAML: .*alias/i,
    );
    assertGoodSurvives(bomb.result);
  });

  it('limits documents per file, at the first document past the limit', () => {
    const { result, errors } = load('many.yaml', 'x: 1\n---\n'.repeat(MAX_DOCUMENTS + 50));
    assert.deepEqual(errors, [`many.yaml:${2 * MAX_DOCUMENTS + 1}:1: more than 100 documents in one file`]);
    assertGoodSurvives(result);
  });

  it('limits nesting depth, pointing at the node that goes too deep', () => {
    const { result, errors } = load('deep.yaml', `${'['.repeat(100)}${']'.repeat(100)}\n`);
    assert.deepEqual(errors, [`deep.yaml:1:${MAX_DEPTH + 1}: nested more than 32 levels deep`]);
    assertGoodSurvives(result);
    // Deeper than the YAML parser itself can follow: still one located error, not a crash.
    const deeper = load('deep.yaml', `${'['.repeat(20000)}${']'.repeat(20000)}\n`);
    assert.equal(deeper.errors.length, 1);
    assert.match(deeper.errors[0]!, /^deep\.yaml:\d+:\d+: /);
    assertGoodSurvives(deeper.result);
  });

  it('never opens a FIFO, and reports a device node or a directory link in place of a manifest', () => {
    execFileSync('mkfifo', [path.join(dir, 'fifo.yaml')]);
    fs.symlinkSync('/dev/null', path.join(dir, 'null.yaml'));
    const result = loadManifestDir(dir, { maxQueues: 4 });
    assert.deepEqual(result.errors.map(formatManifestError), [
      'fifo.yaml: cannot read: it is a FIFO, not a regular file',
      'null.yaml: cannot read: it is a character device, not a regular file',
    ]);
    assertGoodSurvives(result);
  });

  it('reports a symlink loop as a file that cannot be read', () => {
    fs.symlinkSync('b.yaml', path.join(dir, 'a.yaml'));
    fs.symlinkSync('a.yaml', path.join(dir, 'b.yaml'));
    const result = loadManifestDir(dir, { maxQueues: 4 });
    assert.deepEqual(result.errors.map(formatManifestError), [
      'a.yaml: cannot read: ELOOP',
      'b.yaml: cannot read: ELOOP',
    ]);
    assertGoodSurvives(result);
  });

  it('reports a file that is not UTF-8 text', () => {
    fs.writeFileSync(path.join(dir, 'binary.yaml'), Buffer.from([0xff, 0xfe, 0x00, 0x41]));
    const errors = loadManifestDir(dir, { maxQueues: 4 }).errors.map(formatManifestError);
    assert.deepEqual(errors, ['binary.yaml: cannot read: not UTF-8 text']);
  });

  it('counts an empty file, or one of only `---`, as valid but not as evidence: it names nothing', () => {
    fs.writeFileSync(path.join(dir, 'empty.yaml'), '');
    fs.writeFileSync(path.join(dir, 'dashes.yaml'), '---\n');
    const result = loadManifestDir(dir, { maxQueues: 4 });
    assert.deepEqual(result.errors, []);
    assert.deepEqual(result.files, ['dashes.yaml', 'empty.yaml', 'good.yaml']);
    assertGoodSurvives(result);
  });

  it('never echoes more than about 80 characters of a bad value', () => {
    const long = 'x'.repeat(5000);
    const { errors } = load(
      'long.yaml',
      `${manifest('long', `target: {type: loop, file: ${long}}\nqueues: ${long}\nsize: ${long}\nx${'k'.repeat(1000)}: 1`)}`,
    );
    assert.ok(errors.length >= 4, errors.join('\n'));
    for (const e of errors) assert.ok(e.length < 250, `short: ${e}`);
    assert.ok(
      errors.some((e) => e.includes(`… (5000 characters)`)),
      errors.join('\n'),
    );
    assert.ok(MAX_SHOWN_CHARS <= 80);
  });

  it('says "too large" for a size past what a number holds, not "not a whole number"', () => {
    const { errors } = load('big.yaml', manifest('big', 'target: {type: null}\nsize: 99999999999TiB'));
    assert.deepEqual(errors, [
      'big.yaml:7:9: spec.size: is too large: at most 9007199254740991 bytes (8 PiB), got "99999999999TiB"',
    ]);
    const numeric = load('big.yaml', manifest('big', 'target: {type: null}\nsize: 1e30'));
    assert.match(numeric.errors[0]!, /spec\.size: is too large: .*got 1e\+30$/);
  });

  it('makes an empty `type:` an error, while the word null stays the null target', () => {
    const { result, errors } = load(
      'types.yaml',
      `${manifest('empty-type', 'target:\n  type:\nsize: 1MiB')}---\n${manifest('null-type', 'target:\n  type: null\nsize: 1MiB')}`,
    );
    assert.deepEqual(errors, ['types.yaml:7:10: spec.target.type: is empty: must be one of null, memory, loop, js']);
    assert.ok(result.manifests.some((m) => m.name === 'null-type' && m.spec.target.type === 'null'));
  });

  it('leaves a file out of validFiles when any document in it is invalid, or it is cut short', () => {
    const { result } = load(
      'cut.yaml',
      `${manifest('a', 'target: {type: null}\nsize: 1MiB')}---\napiVersion: ublk-ts/v1\nkind: UblkDevice\nmetadata:\n  name: go`,
    );
    assert.ok(result.manifests.some((m) => m.name === 'a'));
    assert.deepEqual(result.validFiles, ['good.yaml']);
  });

  it('yields to the event loop between files when loading asynchronously', async () => {
    for (let i = 0; i < 5; i++)
      fs.writeFileSync(path.join(dir, `m${i}.yaml`), manifest(`m${i}`, 'target: {type: null}\nsize: 1MiB'));
    let ticks = 0;
    const timer = setInterval(() => ticks++, 0);
    let immediates = 0;
    const count = (): void => {
      immediates++;
      if (immediates < 100) setImmediate(count);
    };
    setImmediate(count);
    const result = await loadManifestDirAsync(dir, { maxQueues: 4 });
    clearInterval(timer);
    assert.equal(result.manifests.length, 6);
    assert.ok(immediates >= 5, `the event loop ran between files (${immediates} turns)`);
  });
});
