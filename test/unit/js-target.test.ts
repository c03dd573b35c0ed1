/**
 * What a JS target module declares about itself (volatileCache,
 * recoverable) and what the kernel is then told: the parameters and the
 * recovery mode of its device.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { effectiveRecovery } from '../../src/device/device';
import { loadTargetModule, targetTraits } from '../../src/device/js-target';
import { deviceParams } from '../../src/device/params';
import { normalizeDeviceSpec } from '../../src/spec/device-spec';

const limits = { maxQueues: 4 };

describe('JS target declarations', () => {
  let dir: string;
  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ublk-ts-target-'));
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  function moduleWith(name: string, exports: string): string {
    const file = path.join(dir, `${name}.js`);
    fs.writeFileSync(file, `exports.createTarget = () => ({ handleIo: () => 0 });\n${exports}\n`);
    return file;
  }

  it('defaults: a volatile cache (flushes reach the target) and not recoverable', () => {
    assert.deepEqual(targetTraits(loadTargetModule(moduleWith('plain', ''))), {
      volatileCache: true,
      recoverable: false,
    });
  });

  it('reads both declarations from the module', () => {
    const m = loadTargetModule(moduleWith('declared', 'exports.volatileCache = false; exports.recoverable = true;'));
    assert.deepEqual(targetTraits(m), { volatileCache: false, recoverable: true });
  });

  it('refuses a declaration that is not a boolean, naming the module and the export', () => {
    const file = moduleWith('bad', 'exports.recoverable = "yes";');
    assert.throws(() => loadTargetModule(file), {
      message: `${file}: export recoverable must be true or false, got "yes"`,
    });
  });

  it('device parameters: write back for a JS target by default and for loop; write through when declared, for memory and null', () => {
    const js = normalizeDeviceSpec({ target: { type: 'js', module: moduleWith('p1', '') }, size: '1MiB' }, limits);
    const cached = (params: ReturnType<typeof deviceParams>) => [params.volatileCache ?? false, params.fua ?? false];
    assert.deepEqual(cached(deviceParams(js, 4096, { volatileCache: true, recoverable: false })), [true, true]);
    assert.deepEqual(cached(deviceParams(js, 4096, { volatileCache: false, recoverable: false })), [false, false]);
    const loop = normalizeDeviceSpec(
      { target: { type: 'loop', file: path.join(dir, 'backing.img'), create: true }, size: '1MiB' },
      limits,
    );
    assert.deepEqual(cached(deviceParams(loop, 4096)), [true, true]);
    for (const type of ['memory', 'null'] as const) {
      assert.deepEqual(cached(deviceParams(normalizeDeviceSpec({ target: type, size: '1MiB' }, limits), 4096)), [
        false,
        false,
      ]);
    }
  });

  it('recovery: a JS target gets none unless it declares itself recoverable; other targets keep the spec', () => {
    const js = normalizeDeviceSpec({ target: { type: 'js', module: moduleWith('p2', '') }, size: '1MiB' }, limits);
    assert.equal(js.recovery, 'reissue');
    assert.equal(
      effectiveRecovery(js, { traits: { volatileCache: true, recoverable: false }, shared: undefined }),
      'none',
    );
    assert.equal(
      effectiveRecovery(js, { traits: { volatileCache: true, recoverable: true }, shared: undefined }),
      'reissue',
    );
    const memory = normalizeDeviceSpec({ target: 'memory', size: '1MiB' }, limits);
    assert.equal(effectiveRecovery(memory, undefined), 'reissue');
  });
});
