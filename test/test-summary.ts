/**
 * The closing summary of `npm test`: a line for the unit suite, one per end-to-end leg, and
 * the totals; and whether the run failed. Pure, so its rules (a skipped leg fails the run on
 * CI) are unit-tested.
 */

/** Test counts as mocha reports them (pending counted as skipped). */
export interface Counts {
  passed: number;
  failed: number;
  skipped: number;
}

/** How the end-to-end suite went on one kernel. */
export interface LegResult {
  /** What the summary calls it: `Linux 7.3 (7.3.4+deb13-amd64) in a qemu VM`, `this host (Linux ...)`. */
  label: string;
  counts: Counts;
  /** Exit status of the suite; 0 for a skipped leg. */
  code: number;
  /** Why the leg could not run at all (the VM cannot be had here); it then counts one skipped. */
  skippedReason?: string;
  /** Why the leg failed without a mocha failure to show for it; it then counts one failed. */
  harnessFailure?: string;
  wallMs: number;
}

/** Reads mocha's closing "N passing / N failing / N pending" lines (the last ones, if several). */
export function countsFrom(output: string): Counts {
  const grab = (word: string): number => {
    const matches = [...output.matchAll(new RegExp(`^\\s*(\\d+) ${word}`, 'gm'))];
    return matches.length ? Number(matches[matches.length - 1]![1]) : 0;
  };
  return { passed: grab('passing'), failed: grab('failing'), skipped: grab('pending') };
}

/** The summary lines and the verdict of a whole run. */
export function summarize(
  unit: { counts: Counts; code: number },
  legs: LegResult[],
  onCi: boolean,
): { lines: string[]; failed: boolean } {
  const unitCounts = { ...unit.counts };
  if (unit.code !== 0 && unitCounts.failed === 0) unitCounts.failed += 1;
  const total: Counts = { ...unitCounts };
  for (const leg of legs) {
    total.passed += leg.counts.passed;
    total.failed += leg.counts.failed;
    total.skipped += leg.counts.skipped;
  }
  const lines = [
    `unit: ${countsText(unitCounts)}`,
    ...legs.map((leg) => `end-to-end on ${leg.label}: ${legText(leg)}`),
  ];
  let failed = total.failed > 0 || unit.code !== 0 || legs.some((leg) => leg.code !== 0);
  const skipped = legs.filter((leg) => leg.skippedReason !== undefined);
  if (skipped.length > 0 && onCi) {
    const which = skipped.map((leg) => leg.label).join(', ');
    lines.push(`end-to-end suite could not run on ${which}: on CI every leg must run, so the run fails`);
    failed = true;
  }
  lines.push(countsText(total));
  return { lines, failed };
}

function countsText({ passed, failed, skipped }: Counts): string {
  return `${passed} passed, ${failed} failed, ${skipped} skipped`;
}

function legText(leg: LegResult): string {
  if (leg.skippedReason !== undefined) return `SKIPPED: ${leg.skippedReason}`;
  const why = leg.harnessFailure === undefined ? '' : ` (${leg.harnessFailure})`;
  return `${countsText(leg.counts)}${why}, ${(leg.wallMs / 60_000).toFixed(1)} min`;
}

/**
 * Passes a leg's output to `sink` line by line, each line starting with `prefix`, so that two
 * legs running at once stay readable; an empty prefix passes chunks through as they come.
 * `end` writes a last line that had no newline.
 */
export function prefixedLines(
  prefix: string,
  sink: (text: string) => void,
): { write(chunk: string): void; end(): void } {
  if (prefix === '') return { write: sink, end: () => undefined };
  let partial = '';
  return {
    write(chunk) {
      const lines = (partial + chunk).split('\n');
      partial = lines.pop()!;
      for (const line of lines) sink(`${prefix}${line}\n`);
    },
    end() {
      if (partial !== '') sink(`${prefix}${partial}\n`);
      partial = '';
    },
  };
}
