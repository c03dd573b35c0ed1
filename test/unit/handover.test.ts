/**
 * Which devices can be handed over to a new server without failing IO, and
 * how, from the flags the kernel granted at ADD_DEV; and which flags a new
 * device asks for so that it can be. The handover itself runs against the
 * real driver in test/e2e/handover.test.ts.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { UBLK_F_QUIESCE } from '../../src/kernel/uapi';
import { DeviceLockedError, lockDevice } from '../../src/server/device-lock';
import { UBLK_F_BATCH_IO } from '../../src/kernel/uapi';
import { handoverMethod } from '../../src/server/handover';
import { quiesceFlag, recoveryFlags } from '../../src/spec/recovery-mode';
import { RecoveryMode } from '../../src/spec/limits';

/** Every feature bit up to QUIESCE's, as 6.16+ answers GET_FEATURES. */
const NEW_KERNEL = (1n << 13n) - 1n;
/** 6.12's GET_FEATURES: up to UBLK_F_USER_RECOVERY_FAIL_IO, no QUIESCE. */
const KERNEL_6_12 = (1n << 10n) - 1n;

function deviceFlags(mode: RecoveryMode, features: bigint): bigint {
  return recoveryFlags(mode) | quiesceFlag(mode, features);
}

describe('handover: which devices, and how', () => {
  it('asks for UBLK_F_QUIESCE where the kernel offers it and the device has user recovery (the kernel requires it)', () => {
    assert.equal(quiesceFlag('reissue', NEW_KERNEL), UBLK_F_QUIESCE);
    assert.equal(quiesceFlag('fail-inflight', NEW_KERNEL), UBLK_F_QUIESCE);
    assert.equal(quiesceFlag('none', NEW_KERNEL), 0n, 'QUIESCE without USER_RECOVERY makes ADD_DEV fail');
    assert.equal(quiesceFlag('reissue', KERNEL_6_12), 0n);
  });

  it('uses QUIESCE_DEV on a device that has it, and closing the queues on a reissue device that does not', () => {
    assert.deepEqual(handoverMethod({ id: 1, flags: deviceFlags('reissue', NEW_KERNEL) }), { method: 'quiesce' });
    assert.deepEqual(handoverMethod({ id: 1, flags: deviceFlags('fail-inflight', NEW_KERNEL) }), { method: 'quiesce' });
    assert.deepEqual(handoverMethod({ id: 1, flags: deviceFlags('reissue', KERNEL_6_12) }), { method: 'close' });
  });

  it('refuses, saying why, where a handover would fail IO', () => {
    const refusal = (mode: RecoveryMode, features: bigint): string => {
      const how = handoverMethod({ id: 7, flags: deviceFlags(mode, features) });
      assert.ok('impossible' in how, `${mode} is refused`);
      return how.impossible;
    };
    assert.match(refusal('none', NEW_KERNEL), /device 7 was created without user recovery.*a handover is impossible/);
    assert.match(refusal('fail-io', NEW_KERNEL), /recovery fail-io: IO fails while no server runs/);
    assert.match(refusal('fail-inflight', KERNEL_6_12), /fail-inflight but no UBLK_F_QUIESCE \(Linux 6\.16\+/);
  });

  it('hands a batch device (UBLK_F_BATCH_IO) over by closing its queues, never by QUIESCE_DEV', () => {
    const batch = (mode: RecoveryMode) => ({ id: 3, flags: deviceFlags(mode, NEW_KERNEL) | UBLK_F_BATCH_IO });
    assert.deepEqual(handoverMethod(batch('reissue')), { method: 'close' });
    const how = handoverMethod(batch('fail-inflight'));
    assert.ok('impossible' in how);
    assert.match(how.impossible, /device 3 has batched IO commands \(UBLK_F_BATCH_IO\) and recovery fail-inflight/);
  });

  describe('device lock', () => {
    let stateDir: string;
    beforeEach(() => (stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ublk-ts-handover-'))));
    afterEach(() => fs.rmSync(stateDir, { recursive: true, force: true }));

    it('admits one taker-over per device at a time, naming the holder, and the next once released', () => {
      const held = lockDevice(stateDir, 3);
      assert.throws(
        () => lockDevice(stateDir, 3),
        (err: Error) => err instanceof DeviceLockedError && err.message.includes(`pid ${process.pid}`),
      );
      lockDevice(stateDir, 4).release(); // another device is not held up
      held.release();
      lockDevice(stateDir, 3).release();
    });
  });
});
