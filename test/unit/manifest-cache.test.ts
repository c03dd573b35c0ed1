/**
 * The watcher's manifest cache: an unchanged file is not parsed again, a
 * changed one is, every load still checks permissions and reports
 * duplicates afresh, and errors of one load never leak into the next.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { loadManifestDir, ManifestCache } from '../../src/manifest';
import { manifestCachePath, readManifestCache, saveManifestCache } from '../../src/reconciler/manifest-cache-file';

function manifest(name: string, size = '1GiB'): string {
  return `apiVersion: ublk-ts/v1\nkind: UblkDevice\nmetadata:\n  name: ${name}\nspec:\n  target: {type: null}\n  size: ${size}\n`;
}

describe('manifest cache (the watcher between passes)', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ublk-ts-cache-'));
    fs.chmodSync(dir, 0o755);
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  const write = (file: string, text: string): void => fs.writeFileSync(path.join(dir, file), text, { mode: 0o644 });

  it('hands back the same checked manifest for an unchanged file, and checks a changed one afresh', () => {
    write('a.yaml', manifest('a'));
    write('b.yaml', manifest('b'));
    const cache = new ManifestCache();
    const first = loadManifestDir(dir, { cache });
    const second = loadManifestDir(dir, { cache });
    // The very objects of the first load: nothing was parsed again.
    assert.equal(second.manifests[0], first.manifests[0]);
    assert.equal(second.manifests[1], first.manifests[1]);
    write('b.yaml', manifest('b', '2GiB'));
    const third = loadManifestDir(dir, { cache });
    assert.equal(third.manifests[0], first.manifests[0]);
    assert.notEqual(third.manifests[1], first.manifests[1]);
    assert.equal(third.manifests[1]!.spec.size, '2GiB');
    assert.notEqual(third.manifests[1]!.hash, first.manifests[1]!.hash);
  });

  it('reports a duplicate name on every load, once, and drops it when the duplicate goes', () => {
    write('a.yaml', manifest('same'));
    write('b.yaml', manifest('same'));
    const cache = new ManifestCache();
    for (let i = 0; i < 3; i++) {
      const loaded = loadManifestDir(dir, { cache });
      assert.equal(loaded.manifests.length, 0);
      assert.equal(loaded.errors.length, 2, JSON.stringify(loaded.errors));
    }
    fs.rmSync(path.join(dir, 'b.yaml'));
    const alone = loadManifestDir(dir, { cache });
    assert.deepEqual(alone.errors, []);
    assert.equal(alone.manifests.length, 1);
  });

  it('still checks permissions on every load: a cached file made group-writable is refused', function () {
    if (process.getuid?.() !== 0) this.skip(); // the check is for files root reads
    write('a.yaml', manifest('a'));
    const cache = new ManifestCache();
    assert.equal(loadManifestDir(dir, { cache, checkPermissions: true }).manifests.length, 1);
    fs.chmodSync(path.join(dir, 'a.yaml'), 0o664);
    const refused = loadManifestDir(dir, { cache, checkPermissions: true });
    assert.equal(refused.manifests.length, 0);
    assert.match(refused.errors[0]!.message, /writable by group/);
  });

  it('checks a cached file again when the host limits changed (fewer possible CPUs than its queues)', () => {
    write('a.yaml', `${manifest('a')}  queues: 4\n`);
    const cache = new ManifestCache();
    assert.equal(loadManifestDir(dir, { cache, maxQueues: 8 }).manifests.length, 1);
    const fewer = loadManifestDir(dir, { cache, maxQueues: 2 });
    assert.equal(fewer.manifests.length, 0);
    assert.match(fewer.errors[0]!.message, /must be between 1 and 2, got 4/);
  });
});

describe('saved manifest cache (ublk-reconcile --once, from one process to the next)', () => {
  let dir: string;
  let stateDir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ublk-ts-cache-'));
    stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ublk-ts-cache-state-'));
    fs.chmodSync(dir, 0o755);
  });
  afterEach(() => {
    fs.rmSync(dir, { recursive: true, force: true });
    fs.rmSync(stateDir, { recursive: true, force: true });
  });

  const write = (file: string, text: string): void => fs.writeFileSync(path.join(dir, file), text, { mode: 0o644 });
  /** A pass of a fresh process: restore, load, save. */
  const pass = (opts: { maxQueues?: number } = {}) => {
    const cache = readManifestCache(stateDir);
    const loaded = loadManifestDir(dir, { cache, ...opts });
    saveManifestCache(stateDir, cache);
    return loaded;
  };
  /** Rewrites the saved hash of `file`'s first document: a load that hands it back did not check the file again. */
  const markSaved = (file: string): string => {
    const saved = JSON.parse(fs.readFileSync(manifestCachePath(stateDir), 'utf8'));
    const marker = 'f'.repeat(64);
    saved.cache.files[file].documents[0].manifest.hash = marker;
    fs.writeFileSync(manifestCachePath(stateDir), JSON.stringify(saved));
    return marker;
  };

  it('gives the next process the same manifests for unchanged files, and checks a changed file afresh', () => {
    write('a.yaml', manifest('a'));
    write('b.yaml', manifest('b'));
    const first = pass();
    const marker = markSaved('a.yaml');
    const second = pass();
    assert.equal(second.manifests[0]!.hash, marker, 'a.yaml was parsed again');
    assert.deepEqual(second.manifests[1], first.manifests[1]);
    assert.deepEqual(second.validFiles, first.validFiles);
    write('a.yaml', manifest('a', '2GiB'));
    const third = pass();
    assert.notEqual(third.manifests[0]!.hash, marker);
    assert.notEqual(third.manifests[0]!.hash, first.manifests[0]!.hash);
    assert.equal(third.manifests[0]!.spec.size, '2GiB');
  });

  it('reports a duplicate name between a saved file and a new one, pointing into both files', () => {
    write('a.yaml', manifest('same'));
    pass();
    write('b.yaml', `# b\n${manifest('same')}`);
    const loaded = pass();
    assert.equal(loaded.manifests.length, 0);
    assert.deepEqual(
      loaded.errors.map((e) => `${e.file}:${e.line}:${e.column} ${e.message}`),
      ['a.yaml:4:9 name "same" is also used by b.yaml:5:9', 'b.yaml:5:9 name "same" is also used by a.yaml:4:9'],
    );
  });

  it('saves no file with an error: its errors are found by every pass', () => {
    write('a.yaml', manifest('a'));
    write('bad.yaml', `${manifest('bad')}  queues: 0\n`);
    for (let i = 0; i < 2; i++) {
      const loaded = pass();
      assert.equal(loaded.manifests.length, 1);
      assert.match(loaded.errors[0]!.message, /must be at least 1, got 0/);
    }
    const saved = JSON.parse(fs.readFileSync(manifestCachePath(stateDir), 'utf8'));
    assert.deepEqual(Object.keys(saved.cache.files), ['a.yaml']);
  });

  it('checks a saved file again against other host limits', () => {
    write('a.yaml', `${manifest('a')}  queues: 4\n`);
    assert.equal(pass({ maxQueues: 8 }).manifests.length, 1);
    const fewer = pass({ maxQueues: 2 });
    assert.equal(fewer.manifests.length, 0);
    assert.match(fewer.errors[0]!.message, /must be between 1 and 2, got 4/);
  });

  it('uses no saved cache of another checker, another format, a cut-short file or another shape', () => {
    write('a.yaml', manifest('a'));
    const fresh = pass().manifests[0]!.hash;
    const variants: Array<(saved: Record<string, unknown>) => string> = [
      (s) => JSON.stringify({ ...s, checker: '0'.repeat(64) }),
      (s) => JSON.stringify({ ...s, format: 2 }),
      (s) => JSON.stringify(s).slice(0, 100),
      (s) => JSON.stringify({ ...s, cache: { files: { 'a.yaml': { text: 'x', maxQueues: 2, documents: [{}] } } } }),
    ];
    for (const variant of variants) {
      markSaved('a.yaml');
      const saved = JSON.parse(fs.readFileSync(manifestCachePath(stateDir), 'utf8'));
      fs.writeFileSync(manifestCachePath(stateDir), variant(saved));
      assert.equal(readManifestCache(stateDir).changed, false);
      assert.equal(pass().manifests[0]!.hash, fresh);
    }
  });

  it('still checks permissions with a saved cache: a saved file made group-writable is refused', function () {
    if (process.getuid?.() !== 0) this.skip(); // the check is for files root reads
    write('a.yaml', manifest('a'));
    pass();
    fs.chmodSync(path.join(dir, 'a.yaml'), 0o664);
    const cache = readManifestCache(stateDir);
    const refused = loadManifestDir(dir, { cache, checkPermissions: true });
    assert.equal(refused.manifests.length, 0);
    assert.match(refused.errors[0]!.message, /writable by group/);
  });

  it('writes the cache only when a pass changed it', () => {
    write('a.yaml', manifest('a'));
    pass();
    const before = fs.statSync(manifestCachePath(stateDir)).ino;
    const cache = readManifestCache(stateDir);
    loadManifestDir(dir, { cache });
    assert.equal(cache.changed, false);
    saveManifestCache(stateDir, cache);
    assert.equal(fs.statSync(manifestCachePath(stateDir)).ino, before);
    fs.rmSync(path.join(dir, 'a.yaml'));
    loadManifestDir(dir, { cache });
    assert.equal(cache.changed, true);
  });
});
