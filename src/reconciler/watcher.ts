import { watch, FSWatcher } from 'chokidar';
import * as path from 'node:path';
import { isManifestFile } from '../manifest';
import { UblkControl } from '../control';
import { isAlive } from '../launcher';
import { listRecords } from '../state';
import { PassResult, reconcileOnce, ReconcileOptions } from './reconciler';

export interface WatchOptions extends ReconcileOptions {
  /** Full resync period: catches drift no event reports (default 30 s). */
  resyncMs?: number;
  /** Quiet time after a file event before a pass (default 300 ms). */
  debounceMs?: number;
  /** How often servers' pids are checked (default 500 ms): a dead server is noticed well within 2 s. */
  serverCheckMs?: number;
  onPass?: (result: PassResult) => void;
}

/**
 * The watcher: file events, dead servers and a periodic timer are only
 * hints that a pass is due; every pass re-reads everything (level-based).
 * Passes never overlap; a hint during a pass queues exactly one more.
 */
export class ReconcileWatcher {
  private fsWatcher: FSWatcher | undefined;
  private timers: NodeJS.Timeout[] = [];
  private debounce: NodeJS.Timeout | undefined;
  private running = false;
  private again = false;
  private stopped = false;
  private idle: Promise<void> = Promise.resolve();
  private knownDead = new Set<number>();
  private pendingEvents: string[] = [];
  private passes = 0;

  constructor(
    private readonly control: UblkControl,
    private readonly opts: WatchOptions,
  ) {}

  start(): void {
    this.watchFiles();
    this.timers.push(setInterval(() => this.trigger('periodic resync'), this.opts.resyncMs ?? 30_000));
    this.timers.push(setInterval(() => this.checkServers(), this.opts.serverCheckMs ?? 500));
    this.trigger('start');
  }

  /** Stops watching and waits for a running pass to finish. Servers are not touched. */
  async stop(): Promise<void> {
    this.stopped = true;
    for (const t of this.timers) clearInterval(t);
    if (this.debounce) clearTimeout(this.debounce);
    await this.fsWatcher?.close();
    await this.idle;
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
    this.fsWatcher.on('error', (err) => {
      this.log(`watcher error: ${(err as Error).message}; re-listing everything`);
      void this.fsWatcher?.close().finally(() => {
        if (!this.stopped) this.watchFiles();
      });
      this.trigger('watcher error');
    });
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

  private checkServers(): void {
    let dead = false;
    for (const record of listRecords(this.opts.stateDir)) {
      if (record.owner !== 'reconciler' || record.serverPid <= 0) continue;
      if (isAlive(record.serverPid)) continue;
      if (this.knownDead.has(record.serverPid)) continue;
      this.knownDead.add(record.serverPid);
      this.log(`server pid ${record.serverPid} of ${record.manifest ?? `dev ${record.devId}`} is gone`);
      dead = true;
    }
    if (dead) this.trigger('a server died');
  }

  private trigger(why: string): void {
    if (this.stopped) return;
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = true;
    this.idle = this.runPasses(why);
  }

  private async runPasses(why: string): Promise<void> {
    let reason = why;
    do {
      this.again = false;
      this.log(`pass (${reason})`);
      try {
        const result = await reconcileOnce(this.control, { ...this.opts, quietNoops: this.passes++ > 1 });
        this.opts.onPass?.(result);
        // Devices waiting out a backoff need another look soon, not at the next resync.
        if (result.devices.some((d) => d.action === 'wait')) setTimeout(() => this.trigger('backoff'), 1000).unref();
      } catch (err) {
        this.log(`pass failed: ${(err as Error).message}`);
      }
      reason = 'changes during the last pass';
    } while (this.again && !this.stopped);
    this.running = false;
  }
}
