import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { UblkControl, toNativeParams } from '../../src/kernel/control';
import { EnvironmentError, UblkError } from '../../src/errors';

const root = path.resolve(__dirname, '..', '..', '..');

describe('native addon', () => {
  it('reports a missing control device as an environment problem', async () => {
    await assert.rejects(UblkControl.open('/nonexistent/ublk-control'), (err: unknown) => {
      assert.ok(err instanceof EnvironmentError);
      assert.match((err as Error).message, /does not exist: this kernel has no ublk driver/);
      return true;
    });
  });

  it('raises UblkError with the errno from the native side', async () => {
    // /dev/zero opens but answers no io_uring command: it looks like a
    // kernel without GET_FEATURES, and the next command fails for real.
    const control = await UblkControl.open('/dev/zero');
    try {
      assert.equal(control.features, 0n);
      assert.equal(control.legacyOpcodes, true);
      await assert.rejects(control.getDeviceInfo(3), (err: unknown) => {
        assert.ok(err instanceof UblkError, String(err));
        assert.equal((err as UblkError).op, 'GET_DEV_INFO');
        assert.equal((err as UblkError).devId, 3);
        assert.equal((err as UblkError).code, 'EOPNOTSUPP');
        return true;
      });
    } finally {
      control.close();
    }
  });

  it('encodes device parameters as the kernel expects', () => {
    const p = toNativeParams({ sizeBytes: 1 << 30, logicalBlockSize: 512, maxIoSize: 512 * 1024, readOnly: true });
    assert.equal(p.basic?.devSectors, (1 << 30) / 512);
    assert.equal(p.basic?.logicalBsShift, 9);
    assert.equal(p.basic?.physicalBsShift, 12);
    assert.equal(p.basic?.maxSectors, 1024);
    assert.equal(p.basic?.attrs, 1);
  });
});

describe('native build', () => {
  it('fails with one line naming the package when liburing cannot be found', () => {
    const r = spawnSync(process.execPath, [path.join(root, 'scripts', 'build-native.js')], {
      env: { PATH: '/nonexistent' },
      encoding: 'utf8',
    });
    assert.equal(r.status, 1);
    assert.equal(r.stderr.trim().split('\n').length, 1);
    assert.match(r.stderr, /install Debian's liburing-dev/);
  });
});
