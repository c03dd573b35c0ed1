/**
 * The native queues' argument checks, fetch errors and lifetime, on the host: /dev/zero
 * stands in for /dev/ublkcN (it maps like the descriptor array and answers
 * no io_uring command), so no ublk driver is needed.
 */
import { strict as assert } from 'node:assert';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { native, NativeJsQueue, NativeQueueEvent } from '../../src/kernel/native';
import { UblkError } from '../../src/errors';

const DEPTH = 4;
const MAX_IO = 64 * 1024;

describe('native JsQueue (over /dev/zero)', () => {
  let charFd: number;
  let queue: NativeJsQueue | undefined;
  beforeEach(() => {
    charFd = fs.openSync('/dev/zero', 'r+');
  });
  afterEach(() => {
    queue?.close();
    queue = undefined;
    fs.closeSync(charFd);
  });

  function open(): NativeJsQueue {
    queue = new (native().JsQueue)(
      { devId: 7, qid: 0, charFd, depth: DEPTH, maxIoSize: MAX_IO, legacyOpcodes: false },
      () => undefined,
    );
    return queue;
  }

  it('fetchAll throws the FETCH_REQ failure instead of reporting the queue ready', () => {
    const q = open();
    assert.throws(
      () => q.fetchAll(),
      (err: unknown) => {
        assert.ok(err instanceof UblkError, String(err));
        assert.equal(err.op, 'FETCH_REQ');
        assert.equal(err.devId, 7);
        assert.equal(err.code, 'EOPNOTSUPP');
        return true;
      },
    );
  });

  it('commit refuses a count beyond its arrays, a tag beyond the depth, and a tag with no request', () => {
    const q = open();
    const tags = new Uint32Array(2);
    const results = new Int32Array(2);
    assert.throws(() => q.commit(tags, results, 3), {
      name: 'RangeError',
      message: 'commit: count 3 exceeds tags (2) or results (2)',
    });
    assert.throws(() => q.commit(new Uint32Array(8), results, 8), /count 8 exceeds tags \(8\) or results \(2\)/);
    tags[1] = DEPTH;
    assert.throws(() => q.commit(tags, results, 2), {
      name: 'RangeError',
      message: `commit: tags[1] = ${DEPTH} is not a tag of this queue (depth ${DEPTH})`,
    });
    tags[1] = 1;
    assert.throws(() => q.commit(tags, results, 2), {
      name: 'RangeError',
      message: 'commit: tag 0 (tags[0]) has no request to answer (not arrived, or committed twice)',
    });
    assert.throws(
      () => q.commit([0] as unknown as Uint32Array, results, 1),
      /commit\(tags: Uint32Array, results: Int32Array, count: integer >= 0\)/,
    );
  });

  it('submitTargetIo checks its arguments and bounds the operations in flight', () => {
    const q = open();
    // A FIFO opened read-write: reads of it wait until it is written (or they are cancelled).
    const dir = fs.mkdtempSync('/tmp/ublk-ts-fifo-');
    execFileSync('mkfifo', [`${dir}/fifo`]);
    const fifo = fs.openSync(`${dir}/fifo`, 'r+');
    const readEnd = fifo;
    try {
      assert.throws(() => q.submitTargetIo(false, 0, readEnd, 512, -1, 1), { name: 'TypeError' });
      assert.throws(() => q.submitTargetIo(false, DEPTH, readEnd, 512, 0, 1), {
        name: 'RangeError',
        message: `submitTargetIo: tag ${DEPTH} is not a tag of this queue (depth ${DEPTH})`,
      });
      assert.throws(() => q.submitTargetIo(false, 0, readEnd, MAX_IO + 1, 0, 1), /exceeds the tag's buffer/);
      const capacity = q.targetCompletions.length / 2;
      for (let i = 0; i < capacity; i++) q.submitTargetIo(false, i % DEPTH, readEnd, 512, 0, i + 1);
      assert.throws(
        () => q.submitTargetIo(false, 0, readEnd, 512, 0, capacity + 1),
        (err: unknown) => err instanceof UblkError && err.code === 'EBUSY' && err.op === 'submitTargetIo',
      );
      // close() cancels them and waits until the kernel has let go of the buffers.
      q.close();
      queue = undefined;
      fs.writeSync(fifo, Buffer.alloc(4096, 1));
    } finally {
      fs.closeSync(fifo);
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

/**
 * What a JS target can do with the memory it is handed, run in a child
 * process so that a crash is seen as the child's signal, not mocha's.
 */
const TOUCH_AFTER_CLOSE = `
const fs = require('node:fs');
const { native } = require(${JSON.stringify(require.resolve('../../src/kernel/native'))});
const charFd = fs.openSync('/dev/zero', 'r+');
const q = new (native().JsQueue)({ devId: 7, qid: 0, charFd, depth: ${DEPTH}, maxIoSize: ${MAX_IO}, legacyOpcodes: false }, () => {});
const kept = Buffer.from(q.buffers, 0, ${MAX_IO});
kept.fill(1);
new Uint8Array(q.descriptors).fill(0xff);
q.close();
// Let the ArrayBuffer go too, so nothing but the detach protects the view.
global.gc?.();
setTimeout(() => {
  for (let i = 0; i < ${MAX_IO}; i += 4096) kept[i] = 3;
  let fill = 'no error';
  try {
    kept.fill(2);
  } catch (err) {
    fill = err.message;
  }
  console.log(JSON.stringify({ keptLength: kept.length, buffersLength: q.buffers.byteLength, fill }));
}, 20);
`;

describe('native JsQueue with lockMemory', () => {
  it('locks its IO buffers in memory', () => {
    const locked = (): number => Number(/^VmLck:\s+(\d+) kB/m.exec(fs.readFileSync('/proc/self/status', 'utf8'))![1]);
    const charFd = fs.openSync('/dev/zero', 'r+');
    const before = locked();
    const q = new (native().JsQueue)(
      { devId: 7, qid: 0, charFd, depth: DEPTH, maxIoSize: MAX_IO, legacyOpcodes: false, lockMemory: true },
      () => undefined,
    );
    try {
      assert.ok(locked() - before >= (DEPTH * MAX_IO) / 1024, `VmLck grew from ${before} to ${locked()} kB`);
    } finally {
      q.close();
      fs.closeSync(charFd);
    }
  });
});

describe('native JsQueue memory handed to JS', () => {
  it('a Buffer kept past close() is detached (empty; a write is ignored or throws), and the descriptor array is writable', () => {
    const r = spawnSync(process.execPath, ['--expose-gc', '-e', TOUCH_AFTER_CLOSE], { encoding: 'utf8' });
    assert.equal(r.signal, null, `the process died of ${r.signal}: ${r.stderr}`);
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout), {
      keptLength: 0,
      buffersLength: 0,
      fill: 'Cannot perform %TypedArray%.prototype.fill on a detached ArrayBuffer',
    });
  });
});

describe('native QueueGroup (over /dev/zero)', () => {
  it('a refused FETCH_REQ ends the queue as FETCH_REQ, without reporting it ready', async () => {
    const events: NativeQueueEvent[] = [];
    await new Promise<void>((resolve) => {
      new (native().QueueGroup)(
        {
          devId: 7,
          charPath: '/dev/zero',
          depth: DEPTH,
          maxIoSize: MAX_IO,
          legacyOpcodes: false,
          ringFlags: 0,
          target: 'null',
          sizeBytes: 1 << 20,
          backingIsBlockDevice: false,
          readOnly: false,
          lockMemory: false,
          queues: [{ qid: 0, cpus: [] }],
        },
        (e) => {
          events.push(e);
          if (e.kind === 'exit') resolve();
        },
      );
    });
    assert.deepEqual(
      events.map((e) => e.kind),
      ['exit'],
    );
    assert.ok(events[0]!.error instanceof UblkError);
    assert.equal(events[0]!.error.op, 'FETCH_REQ');
    assert.equal(events[0]!.error.code, 'EOPNOTSUPP');
  });
});
