import { strict as assert } from 'node:assert';
import { errnoName, UblkError } from '../../src/errors';
import { deserializeError, serializeError } from '../../src/server/protocol';
import { deviceStateName, featureNames } from '../../src/kernel/uapi';

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
});

describe('uapi names', () => {
  it('names all four device states', () => {
    assert.deepEqual([0, 1, 2, 3].map(deviceStateName), ['DEAD', 'LIVE', 'QUIESCED', 'FAIL_IO']);
    assert.equal(deviceStateName(9), 'UNKNOWN_9');
  });

  it('names feature flags, keeping unknown bits visible', () => {
    assert.deepEqual(featureNames((1n << 1n) | (1n << 6n)), ['URING_CMD_COMP_IN_TASK', 'CMD_IOCTL_ENCODE']);
    assert.deepEqual(featureNames(1n << 40n), ['BIT40']);
  });
});
