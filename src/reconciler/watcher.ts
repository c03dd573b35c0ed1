/**
 * The watcher: file events, dead servers and a periodic timer are only
 * hints that a pass is due; every pass re-reads everything (level-based).
 * Passes never overlap; a hint during a pass queues exactly one more. A
 * pass that returns `requeueAfterMs` gets a pass at that time. The retry
 * timing of failing devices lives in the watcher's one Backoff. Passes
 * start at most once per `minPassIntervalMs`, however many hints come (a
 * link to itself makes chokidar report without end), and a watcher error
 * is a hint too: logged, never fatal.
 */
import { FSWatcher, watch } from 'chokidar';
import * as path from 'node:path';
import { isManifestFile } from '../manifest';
import { Backoff } from './backoff';
import type { Kernel } from './kernel';
import { ManifestCache } from '../manifest';
import { PassResult, reconcileOnce, ReconcileOptions } from './reconciler';

export interface WatchOptions extends Omit<ReconcileOptions, 'backoff' | 'quietNoops'> {
  /** Full resync period: catches drift no event reports (default 30 s). */
  resyncMs?: number;
  /** Quiet time after a file event before a pass (default 300 ms). */
  debounceMs?: number;
  /** How often servers' pids are checked (default 500 ms): a dead server is noticed well within 2 s. */
  serverCheckMs?: number;
  /** Watch the directory for file events (default true; tests drive passes by hand). */
  watchFiles?: boolean;
  /** Retry timing of failing devices (default: 1 s doubling to 60 s). */
  backoff?: Backoff;
  /** Least time between the starts of two passes (default 250 ms): bounds the pass rate whatever the hints. */
  minPassIntervalMs?: number;
  onPass?: (result: PassResult) => void;
  /** A pass that could not run (a corrupt record, the directory gone): the watcher carries on. */
  onPassError?: (err: Error) => void;
}

/** Default least time between two passes' starts. */
export const MIN_PASS_INTERVAL_MS = 250;

/**
 * Which servers of owned devices died since the last look: each dead pid
 * is reported once (`seen` remembers them), so one death is one hint.
 */
export function newlyDeadServers(
  kernel: Kernel,
  seen: Map<number, number>,
  now: number,
): Array<{ pid: number; what: string }> {
  const dead: Array<{ pid: number; what: string }> = [];
  for (const record of kernel.records.list()) {
    if (record.owner !== 'reconciler' || record.serverPid <= 0) continue;
    if (kernel.isAlive(record.serverPid) || seen.has(record.serverPid)) continue;
    seen.set(record.serverPid, now);
    dead.push({ pid: record.serverPid, what: record.manifest ?? `dev ${record.devId}` });
  }
  return dead;
}

/** Runs reconcile passes whenever a hint says one is due, until stopped; see the file comment. */
export class ReconcileWatcher {
  /** Retry timing for every device, kept across passes. */
  readonly backoff: Backoff;
  private fsWatcher: FSWatcher | undefined;
  private timers: NodeJS.Timeout[] = [];
  private debounce: NodeJS.Timeout | undefined;
  private requeue: NodeJS.Timeout | undefined;
  /** Each manifest file's last checked text and result: a resync that finds a file unchanged does not parse it again. */
  private readonly manifestCache = new ManifestCache();
  private running = false;
  private again = false;
  private queuedReasons: string[] = [];
  private stopped = false;
  private idle: Promise<void> = Promise.resolve();
  /** Dead server pids and when each death was noticed: a server's lifetime ends there, not at the pass that handles it. */
  private knownDead = new Map<number, number>();
  private pendingEvents: string[] = [];
  private passes = 0;
  private lastPassAt = -Infinity;
  /** Watcher errors already logged, so a path that keeps failing is one line, not a flood. */
  private loggedErrors = new Set<string>();

  constructor(
    private readonly kernel: Kernel,
    private readonly opts: WatchOptions,
  ) {
    this.backoff = opts.backoff ?? new Backoff();
  }

  start(): void {
    if (this.opts.watchFiles ?? true) this.watchFiles();
    this.timers.push(setInterval(() => this.trigger('periodic resync'), this.opts.resyncMs ?? 30_000));
    this.timers.push(setInterval(() => this.checkServers(), this.opts.serverCheckMs ?? 500));
    this.trigger('start');
  }

  /** Stops watching and waits for a running pass to finish. Servers are not touched. */
  async stop(): Promise<void> {
    this.stopped = true;
    for (const t of this.timers) clearInterval(t);
    if (this.debounce) clearTimeout(this.debounce);
    if (this.requeue) clearTimeout(this.requeue);
    await this.fsWatcher?.close();
    await this.idle;
  }

  /** Resolves once no pass is running (a pass triggered meanwhile included). */
  async settled(): Promise<void> {
    while (this.running) await this.idle;
  }

  private log(line: string): void {
    this.opts.log?.(line);
  }

  private watchFiles(): void {
    this.fsWatcher = watch(this.opts.dir, { ignoreInitial: true, depth: 0, atomic: true });
    // Only manifest files matter: an editor's swap file or a tool's temporary file is noise.
    const hint = (event: string) => (file: string) => {
      if (isManifestFile(path.basename(file))) this.schedule(`${event} ${path.basename(file)}`);
    };
    this.fsWatcher.on('add', hint('added')).on('change', hint('changed')).on('unlink', hint('removed'));
    // A file written while the first scan ran counts as already there, with no event: pass again once ready.
    this.fsWatcher.on('ready', () => {
      this.log(`watching ${this.opts.dir}`);
      this.trigger('watching');
    });
    // chokidar goes on watching after an error (a symlink loop, a file that vanished while being
    // looked at); closing it here would leave its late errors with no listener, which kills the
    // process. Level-based: the error is a hint that a full pass is due, debounced like any event.
    this.fsWatcher.on('error', (err) => this.watcherError(err as Error));
  }

  /** Logs a watcher error once per distinct message and schedules a pass that re-lists everything. */
  watcherError(err: Error): void {
    const message = err.message;
    if (!this.loggedErrors.has(message)) {
      if (this.loggedErrors.size < 100) this.loggedErrors.add(message);
      this.log(`watcher error: ${message}; re-listing everything`);
    }
    this.schedule('watcher error');
  }

  private schedule(event: string): void {
    if (this.debounce) clearTimeout(this.debounce);
    if (!this.pendingEvents.includes(event)) this.pendingEvents.push(event);
    this.debounce = setTimeout(() => {
      const why = this.pendingEvents.join(', ');
      this.pendingEvents = [];
      this.trigger(why);
    }, this.opts.debounceMs ?? 300);
  }

  /** Looks for servers that died; one pass for however many. */
  checkServers(): void {
    let dead: Array<{ pid: number; what: string }>;
    try {
      dead = newlyDeadServers(this.kernel, this.knownDead, (this.opts.now ?? Date.now)());
    } catch {
      // A record that cannot be read: passes report it (the periodic one too); this check must not end the process.
      return;
    }
    for (const d of dead) this.log(`server pid ${d.pid} of ${d.what} is gone`);
    if (dead.length > 0) this.trigger('a server died');
  }

  /** A hint that a pass is due: starts one now, or one more after the running one. */
  trigger(why: string): void {
    if (this.stopped) return;
    if (this.running) {
      this.again = true;
      // The next pass says why it runs: which files changed, not just that something did.
      if (!this.queuedReasons.includes(why)) this.queuedReasons.push(why);
      return;
    }
    this.running = true;
    this.idle = this.runPasses(why);
  }

  /** Schedules the pass a result asked for; an earlier request replaces a later one. */
  private requeueAfter(ms: number): void {
    if (this.requeue) clearTimeout(this.requeue);
    this.requeue = setTimeout(() => {
      this.requeue = undefined;
      this.trigger('backoff');
    }, ms);
    this.requeue.unref();
  }

  private async runPasses(why: string): Promise<void> {
    let reason = why;
    do {
      this.again = false;
      const wait = this.lastPassAt + (this.opts.minPassIntervalMs ?? MIN_PASS_INTERVAL_MS) - Date.now();
      if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
      if (this.stopped) break;
      this.lastPassAt = Date.now();
      this.log(`pass (${reason})`);
      try {
        const result = await reconcileOnce(this.kernel, {
          ...this.opts,
          backoff: this.backoff,
          manifestCache: this.manifestCache,
          deathNoticedAt: (pid) => this.knownDead.get(pid),
          quietNoops: this.passes++ > 1,
        });
        this.opts.onPass?.(result);
        if (result.requeueAfterMs !== undefined) this.requeueAfter(result.requeueAfterMs);
      } catch (err) {
        this.log(`pass failed: ${(err as Error).message}`);
        this.opts.onPassError?.(err as Error);
      }
      reason = this.queuedReasons.join(', ') || 'changes during the last pass';
      this.queuedReasons = [];
    } while (this.again && !this.stopped);
    this.running = false;
  }
}
