/** What the record reporter writes per test, and the stress runner reads. */
export interface TestRecord {
  /** mocha's full title: the describe blocks and the test. */
  title: string;
  state: 'passed' | 'failed' | 'pending';
  durationMs?: number;
  /** The failure's stack, cut to 4000 characters. */
  error?: string;
}
