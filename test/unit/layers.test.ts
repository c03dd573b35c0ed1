/**
 * The layers that need no kernel load no compiled addon: the manifest
 * loader, the planner and the whole reconciler against the fake kernel run
 * in a process where loading any `.node` file throws.
 */
import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';

const DIST = path.resolve(__dirname, '..', '..');

describe('layers without the native addon', () => {
  it('loads manifests, plans and reconciles against the fake kernel with .node loading forbidden', () => {
    const script = `
      require.extensions['.node'] = () => { throw new Error('the native addon was loaded'); };
      const path = require('node:path');
      const d = ${JSON.stringify(DIST)};
      require(path.join(d, 'src/manifest/index.js'));
      require(path.join(d, 'src/reconciler/planner.js'));
      const { reconcileOnce } = require(path.join(d, 'src/reconciler/reconciler.js'));
      const { FakeKernel } = require(path.join(d, 'test/fakes/fake-kernel.js'));
      const { nativeLoaded } = require(path.join(d, 'src/kernel/native.js'));
      const fixtures = path.join(d, '..', 'test', 'fixtures', 'manifests', 'valid');
      reconcileOnce(new FakeKernel(), { dir: fixtures }).then((r) => {
        if (nativeLoaded()) throw new Error('loaded');
        console.log(JSON.stringify(r.devices.map((x) => x.action)));
      }).catch((e) => { console.error(e.stack); process.exit(1); });
    `;
    const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    const actions = JSON.parse(r.stdout) as string[];
    assert.ok(actions.length > 0 && actions.every((a) => a === 'create'), r.stdout);
  });
});
