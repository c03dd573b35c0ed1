/**
 * `npm test`'s closing summary: one line per kernel leg, the totals, and when the run fails —
 * a skipped leg only on CI, a failed or crashed leg always.
 */
import { strict as assert } from 'node:assert';
import { countsFrom, type LegResult, prefixedLines, summarize } from '../test-summary';

const UNIT_OK = { counts: { passed: 150, failed: 0, skipped: 0 }, code: 0 };

function ran(label: string, passed: number, failed = 0): LegResult {
  return { label, counts: { passed, failed, skipped: 0 }, code: failed > 0 ? 1 : 0, wallMs: 7.2 * 60_000 };
}

function skipped(label: string, reason: string): LegResult {
  return { label, counts: { passed: 0, failed: 0, skipped: 1 }, code: 0, skippedReason: reason, wallMs: 100 };
}

describe('npm test summary', () => {
  it('prints a line per leg and the totals over the unit suite and every leg', () => {
    const { lines, failed } = summarize(
      UNIT_OK,
      [
        ran('Linux 6.12 (6.12.118+deb13-amd64) in a qemu VM', 59),
        ran('Linux 7.3 (7.3.4+deb13-amd64) in a qemu VM', 58),
      ],
      true,
    );
    assert.deepEqual(lines, [
      'unit: 150 passed, 0 failed, 0 skipped',
      'end-to-end on Linux 6.12 (6.12.118+deb13-amd64) in a qemu VM: 59 passed, 0 failed, 0 skipped, 7.2 min',
      'end-to-end on Linux 7.3 (7.3.4+deb13-amd64) in a qemu VM: 58 passed, 0 failed, 0 skipped, 7.2 min',
      '267 passed, 0 failed, 0 skipped',
    ]);
    assert.equal(failed, false);
  });

  it('reports a skipped leg with its reason; off CI the run still passes', () => {
    const { lines, failed } = summarize(
      UNIT_OK,
      [ran('Linux 6.12 in a qemu VM', 59), skipped('Linux 7.3 in a qemu VM', 'cannot download kernel: no route')],
      false,
    );
    assert.equal(lines[2], 'end-to-end on Linux 7.3 in a qemu VM: SKIPPED: cannot download kernel: no route');
    assert.equal(lines.at(-1), '209 passed, 0 failed, 1 skipped');
    assert.equal(failed, false);
  });

  it('on CI a skipped leg fails the run, even when the other leg passed', () => {
    const { lines, failed } = summarize(
      UNIT_OK,
      [ran('Linux 6.12 in a qemu VM', 59), skipped('Linux 7.3 in a qemu VM', 'no qemu')],
      true,
    );
    assert.equal(failed, true);
    assert.match(lines.at(-2)!, /could not run on Linux 7\.3 in a qemu VM: on CI every leg must run/);
  });

  it('a failing leg fails the run, and a harness failure says why', () => {
    const crashed: LegResult = {
      ...ran('Linux 7.3 in a qemu VM', 10, 1),
      harnessFailure: 'the guest did not finish within 30 min',
    };
    const { lines, failed } = summarize(UNIT_OK, [ran('Linux 6.12 in a qemu VM', 59), crashed], false);
    assert.equal(failed, true);
    assert.match(lines[2], /10 passed, 1 failed, 0 skipped \(the guest did not finish within 30 min\)/);
  });

  it('a unit run that exited non-zero without a mocha failure counts one failure', () => {
    const { lines, failed } = summarize({ counts: { passed: 0, failed: 0, skipped: 0 }, code: 1 }, [], false);
    assert.equal(failed, true);
    assert.equal(lines[0], 'unit: 0 passed, 1 failed, 0 skipped');
  });

  it("reads the last of mocha's closing counts", () => {
    const output = '  3 passing (1s)\n\n  58 passing (7m)\n  1 failing\n  2 pending\n';
    assert.deepEqual(countsFrom(output), { passed: 58, failed: 1, skipped: 2 });
  });
});

describe('npm test output of legs running at once', () => {
  it('prefixes every line with its leg, however the chunks split it, and ends a last partial line', () => {
    const written: string[] = [];
    const out = prefixedLines('[7.3] ', (text) => written.push(text));
    out.write('  ✔ first');
    out.write(' test\n  ✔ second test\n\n  2 pass');
    out.write('ing\n  fail');
    out.end();
    assert.deepEqual(written.join('').split('\n'), [
      '[7.3]   ✔ first test',
      '[7.3]   ✔ second test',
      '[7.3] ',
      '[7.3]   2 passing',
      '[7.3]   fail',
      '',
    ]);
  });

  it('passes chunks through untouched without a prefix (one leg, or --serial)', () => {
    const written: string[] = [];
    const out = prefixedLines('', (text) => written.push(text));
    out.write('a\nb');
    out.end();
    assert.deepEqual(written, ['a\nb']);
  });
});
