/**
 * mocha's spec output, plus one JSON record per test written to
 * $UBLK_TS_REPORT_FILE when the run ends: the stress runner counts
 * passes and failures per test across runs from these files.
 */
import * as fs from 'node:fs';
import Mocha from 'mocha';

import type { TestRecord } from './test-record';

class RecordReporter extends Mocha.reporters.Spec {
  constructor(runner: Mocha.Runner, options?: Mocha.MochaOptions) {
    super(runner, options);
    const records: TestRecord[] = [];
    const { EVENT_TEST_PASS, EVENT_TEST_FAIL, EVENT_TEST_PENDING, EVENT_RUN_END } = Mocha.Runner.constants;
    runner.on(EVENT_TEST_PASS, (t: Mocha.Test) =>
      records.push({ title: t.fullTitle(), state: 'passed', durationMs: t.duration }),
    );
    runner.on(EVENT_TEST_PENDING, (t: Mocha.Test) => records.push({ title: t.fullTitle(), state: 'pending' }));
    // A failing hook is reported under its own title ("after all" hook ...), so leaks show as failures too.
    runner.on(EVENT_TEST_FAIL, (t: Mocha.Runnable, err: Error) =>
      records.push({
        title: t.fullTitle(),
        state: 'failed',
        durationMs: t.duration,
        error: (err.stack ?? err.message).slice(0, 4000),
      }),
    );
    runner.once(EVENT_RUN_END, () => {
      const file = process.env.UBLK_TS_REPORT_FILE;
      if (file) fs.writeFileSync(file, JSON.stringify(records, null, 1));
    });
  }
}

export = RecordReporter;
