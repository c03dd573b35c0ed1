import { strict as assert } from 'node:assert';
import { normalizeDeviceSpec } from '../../src/spec/device-spec';
import { SpecError } from '../../src/errors';

const limits = { maxQueues: 4 };

function rejects(input: Parameters<typeof normalizeDeviceSpec>[0], field: string, pattern: RegExp): void {
  assert.throws(
    () => normalizeDeviceSpec(input, limits),
    (err: unknown) => {
      assert.ok(err instanceof SpecError, `expected SpecError, got ${String(err)}`);
      assert.equal(err.field, field);
      assert.match(err.message, pattern);
      return true;
    },
  );
}

describe('device spec', () => {
  it('applies the documented defaults', () => {
    const spec = normalizeDeviceSpec({ target: 'null', size: '1GiB' }, limits);
    assert.deepEqual(spec, {
      target: { type: 'null' },
      sizeBytes: 1024 ** 3,
      queues: 1,
      depth: 128,
      maxIoSize: 512 * 1024,
      logicalBlockSize: 512,
      readOnly: false,
      lockMemory: false,
      recovery: 'reissue',
    });
  });

  it('keeps a fixed id and explicit geometry', () => {
    const spec = normalizeDeviceSpec(
      {
        target: { type: 'null' },
        size: 4096 * 10,
        id: 7,
        queues: 4,
        depth: 4096,
        maxIoSize: '1MiB',
        logicalBlockSize: 4096,
      },
      limits,
    );
    assert.equal(spec.id, 7);
    assert.equal(spec.queues, 4);
    assert.equal(spec.depth, 4096);
    assert.equal(spec.maxIoSize, 1024 * 1024);
  });

  it('rejects depth 0 and depth above 4096', () => {
    rejects({ target: 'null', size: '1GiB', depth: 0 }, 'depth', /between 1 and 4096, got 0/);
    rejects({ target: 'null', size: '1GiB', depth: 4097 }, 'depth', /between 1 and 4096, got 4097/);
  });

  it('rejects queues 0 and more queues than the kernel allows here', () => {
    rejects({ target: 'null', size: '1GiB', queues: 0 }, 'queues', /between 1 and 4, got 0/);
    rejects({ target: 'null', size: '1GiB', queues: 5 }, 'queues', /between 1 and 4, got 5/);
  });

  it('rejects sizes that are not a multiple of the logical block size, and missing sizes', () => {
    rejects({ target: 'null', size: 1000 }, 'size', /multiple of the logical block size \(512\), got 1000/);
    rejects({ target: 'null', size: 6144, logicalBlockSize: 4096 }, 'size', /\(4096\), got 6144/);
    rejects({ target: 'null' }, 'size', /required/);
    rejects({ target: 'null', size: 0 }, 'size', /greater than 0/);
  });

  it('rejects unknown targets, naming the ones that exist', () => {
    rejects({ target: 'nbd' as never, size: '1GiB' }, 'target', /unknown target "nbd": expected one of null/);
  });

  it('rejects non-numeric values with what was given', () => {
    rejects({ target: 'null', size: '1GiB', depth: 'deep' as unknown as number }, 'depth', /got "deep"/);
    rejects({ target: 'null', size: '1GiB', maxIoSize: '6000' }, 'maxIoSize', /multiple of 4KiB/);
    rejects(
      { target: 'null', size: '1GiB', logicalBlockSize: 3000 as never },
      'logicalBlockSize',
      /512, 1024, 2048, 4096/,
    );
    rejects({ target: 'null', size: '1GiB', id: -1 }, 'id', /between 0 and/);
    rejects(
      { target: 'null', size: '1GiB', recovery: 'sometimes' as never },
      'recovery',
      /reissue, fail-inflight, fail-io, none, got "sometimes"/,
    );
  });
});
