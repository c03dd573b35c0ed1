import { strict as assert } from 'node:assert';
import { formatSize, parseSize } from '../../src/spec/sizes';

describe('sizes', () => {
  it('parses integers as bytes and binary unit strings', () => {
    assert.deepEqual(parseSize(4096), { bytes: 4096 });
    assert.deepEqual(parseSize('512KiB'), { bytes: 512 * 1024 });
    assert.deepEqual(parseSize('10GiB'), { bytes: 10 * 1024 ** 3 });
    assert.deepEqual(parseSize('1TiB'), { bytes: 1024 ** 4 });
    assert.deepEqual(parseSize('1.5MiB'), { bytes: 1.5 * 1024 ** 2 });
    assert.deepEqual(parseSize('4096'), { bytes: 4096 });
  });

  it('rejects unknown units, fractions of a byte and negative numbers with a reason', () => {
    const unit = parseSize('10GB');
    assert.ok('error' in unit && /unknown size unit "GB"/.test(unit.error), JSON.stringify(unit));
    const fraction = parseSize('0.3KiB');
    assert.ok('error' in fraction && /whole number of bytes/.test(fraction.error));
    assert.ok('error' in parseSize(-1));
    assert.ok('error' in parseSize('lots'));
    assert.ok('error' in parseSize(true));
  });

  it('formats with the largest exact unit', () => {
    assert.equal(formatSize(1024 ** 3), '1GiB');
    assert.equal(formatSize(512 * 1024), '512KiB');
    assert.equal(formatSize(1536), '1536B');
    assert.equal(formatSize(3 * 1024 ** 2), '3MiB');
  });
});
