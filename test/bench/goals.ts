/**
 * The benchmark's rows and the ratio each should reach per kernel leg
 * (issue 14). Shared by the guest, which prints one table per boot, and
 * the host, which prints both legs side by side.
 */

/** One benchmark row's identity: a stable key for bench.json and the summary. */
export type RowId =
  | 'null'
  | 'null-mq-deadline'
  | 'null-batch-io'
  | 'null-threads-2'
  | 'loop-batch-io'
  | 'memory'
  | 'memory-zero-copy'
  | 'loop-direct-zero-copy'
  | 'blockdev-loop'
  | 'blockdev-loop-copy'
  | 'bw-blockdev-loop'
  | 'bw-blockdev-loop-copy'
  | 'bw-memory-zero-copy'
  | 'bw-loop-zero-copy'
  | 'js-null'
  | 'loop-direct'
  | 'loop-buffered'
  | 'qd1-null'
  | 'qd1-memory'
  | 'qd1-loop'
  | 'q2-null'
  | 'q2-memory'
  | 'q2-loop'
  | 'bw-memory'
  | 'bw-loop';

/** The least ratio to its kernel reference a row should show, per kernel leg; absent: no goal, just reported. */
export const GOALS: Record<string, Partial<Record<RowId, number>>> = {
  // 6.12: no regression from what the copy path reached, and the memory target on written data.
  '6.12': { null: 0.62, 'loop-direct': 0.66, memory: 0.6 },
  // 7.3: every ublk server is ~35% slower in this VM (kernel side); bandwidth is where zero copy shows.
  '7.3': { null: 0.42, 'loop-direct': 0.5, memory: 0.45, 'bw-loop': 0.8 },
};

/** The goal of row `id` on kernel leg `leg`, if the issue set one. */
export function goalFor(leg: string, id: string): number | undefined {
  return GOALS[leg]?.[id as RowId];
}

/** One measured row as the guest reports it in bench.json. */
export interface BenchRow {
  id: RowId | 'reference';
  /** Which section of the table: the fio job all its rows share. */
  section: string;
  name: string;
  /** IOPS, or MiB/s for the bandwidth section. */
  value: number;
  unit: 'IOPS' | 'MiB/s';
  /** The kernel reference's name and its figure in the same section; absent on the reference rows themselves. */
  reference?: string;
  ratio?: number;
  /** ublk rows: how data moves between the kernel and the server (ublkctl list --json dataPath; "copy" where absent). */
  dataPath?: string;
}

/** What one VM boot's bench writes to bench.json. */
export interface BenchResult {
  kernel: string;
  kernelRelease: string;
  cpuModel: string;
  runtimeSeconds: number;
  nullBlkRuns: number[];
  /** Absent when only the reconcile section ran (UBLK_TS_BENCH_ONLY=reconcile). */
  rows?: BenchRow[];
  /** The manager's section (reconcile-bench.ts). */
  reconcile?: unknown;
}

/** One row as a table line: name, figure, data path, ratio and its goal. */
export function formatRow(row: BenchRow, leg: string): string {
  const figure = `${String(row.value).padStart(8)} ${row.unit.padEnd(5)}`;
  const path = row.dataPath !== undefined ? `[${row.dataPath}]` : '';
  let ratio = '';
  if (row.ratio !== undefined) {
    const goal = goalFor(leg, row.id);
    const verdict = goal === undefined ? '' : `  goal >= ${goal.toFixed(2)} ${row.ratio >= goal ? 'met' : 'MISSED'}`;
    ratio = `ratio ${row.ratio.toFixed(3)} to ${row.reference}${verdict}`;
  }
  return `  ${row.name.padEnd(44)} ${figure} ${path.padEnd(12)} ${ratio}`;
}
