import { strict as assert } from 'node:assert';
import { ERRNO, errnoName, SpecError, UblkError } from '../../src/errors';
import { deserializeError, serializeError } from '../../src/server/protocol';
import { decodeIoDescriptor, deviceStateName, featureNames, IO_DESC_SIZE } from '../../src/kernel/uapi';

describe('errors', () => {
  it('formats kernel errors with command, device and errno name', () => {
    const err = new UblkError('ADD_DEV', 5, 17);
    assert.equal(err.message, 'ADD_DEV dev 5: EEXIST (device id in use)');
    assert.equal(err.code, 'EEXIST');
    assert.equal(err.devId, 5);
    assert.equal(new UblkError('STOP_DEV', -1, 19).message, 'STOP_DEV: ENODEV (no such device)');
  });

  it('names unknown errnos instead of dropping them', () => {
    assert.equal(errnoName(4242), 'UNKNOWN_4242');
  });

  it('keeps the error type across the server status channel', () => {
    const back = deserializeError(serializeError(new UblkError('START_DEV', 3, 22)));
    assert.ok(back instanceof UblkError);
    assert.equal(back.message, 'START_DEV dev 3: EINVAL (device parameters missing or invalid)');
  });

  it('keeps every field, detail included, across the status channel', () => {
    const ublk = new UblkError('START_USER_RECOVERY', 4, ERRNO.EINVAL, 'device is LIVE, not QUIESCED or FAIL_IO');
    const back = deserializeError(JSON.parse(JSON.stringify(serializeError(ublk)))) as UblkError;
    assert.deepEqual(
      [back.op, back.devId, back.errno, back.code, back.detail, back.message],
      [ublk.op, 4, 22, 'EINVAL', ublk.detail, ublk.message],
    );
    const spec = new SpecError('target.file', '/x does not exist');
    const specBack = deserializeError(JSON.parse(JSON.stringify(serializeError(spec)))) as SpecError;
    assert.ok(specBack instanceof SpecError);
    assert.deepEqual(
      [specBack.field, specBack.detail, specBack.message],
      ['target.file', '/x does not exist', 'target.file: /x does not exist'],
    );
  });

  it('names the errnos of conditions found in JavaScript', () => {
    assert.equal(errnoName(ERRNO.ETIMEDOUT), 'ETIMEDOUT');
    assert.equal(errnoName(ERRNO.ENOENT), 'ENOENT');
  });
});

describe('uapi names', () => {
  it('decodes struct ublksrv_io_desc', () => {
    const view = new DataView(new ArrayBuffer(IO_DESC_SIZE * 2));
    view.setUint32(IO_DESC_SIZE + 0, 1 | (1 << 13), true); // WRITE | UBLK_IO_F_FUA
    view.setUint32(IO_DESC_SIZE + 4, 8, true);
    view.setUint32(IO_DESC_SIZE + 8, 0, true);
    view.setUint32(IO_DESC_SIZE + 12, 1, true); // start sector 2^32
    assert.deepEqual(decodeIoDescriptor(view, 1), {
      op: 'write',
      flags: 1 << 5,
      fua: true,
      offset: 2 ** 32 * 512,
      length: 4096,
    });
    view.setUint32(0, 2, true);
    assert.equal(decodeIoDescriptor(view, 0).length, 0, 'a flush moves no data');
  });

  it('names all four device states', () => {
    assert.deepEqual([0, 1, 2, 3].map(deviceStateName), ['DEAD', 'LIVE', 'QUIESCED', 'FAIL_IO']);
    assert.equal(deviceStateName(9), 'UNKNOWN_9');
  });

  it('names feature flags, keeping unknown bits visible', () => {
    assert.deepEqual(featureNames((1n << 1n) | (1n << 6n)), ['URING_CMD_COMP_IN_TASK', 'CMD_IOCTL_ENCODE']);
    assert.deepEqual(featureNames(1n << 40n), ['BIT40']);
    // What Linux 7.3 answers GET_FEATURES with: every flag up to bit 20, the last not yet in the UAPI header we follow.
    const names = featureNames(0x1fffffn);
    assert.deepEqual(names.slice(15), [
      'BATCH_IO',
      'INTEGRITY',
      'SAFE_STOP_DEV',
      'NO_AUTO_PART_SCAN',
      'SHMEM_ZC',
      'BIT20',
    ]);
  });
});
