import { strict as assert } from 'node:assert';
import { codeMappings } from '../../src/server/lock-memory';

describe('lockMemory: the code a server locks', () => {
  it('picks the executable mappings of files from /proc/PID/maps, nothing anonymous or writable', () => {
    const maps = [
      '55d0c0a00000-55d0c2a00000 r-xp 00200000 fe:01 1312 /usr/bin/node',
      '55d0c2a00000-55d0c2b00000 r--p 02200000 fe:01 1312 /usr/bin/node',
      '7f1c3c000000-7f1c3c021000 rw-p 00000000 00:00 0 ',
      '7f1c40000000-7f1c40040000 rwxp 00000000 00:00 0 ',
      '7f1c4a0c5000-7f1c4a0e9000 r-xp 00004000 fe:01 9051 /work/build/Release/ublk_ts.node',
      '7fffa1e0e000-7fffa1e2f000 rw-p 00000000 00:00 0                          [stack]',
      'ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]',
    ].join('\n');
    assert.deepEqual(codeMappings(maps), [
      { start: 0x55d0c0a00000n, end: 0x55d0c2a00000n, path: '/usr/bin/node' },
      { start: 0x7f1c4a0c5000n, end: 0x7f1c4a0e9000n, path: '/work/build/Release/ublk_ts.node' },
    ]);
  });
});
