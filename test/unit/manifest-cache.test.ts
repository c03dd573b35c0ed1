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
