#!/usr/bin/env node
/**
 * ublk-reconcile — makes the host's ublk devices match the manifests in a
 * directory. Watches by default; --once for one pass; --plan to print
 * what would be done; --validate to check manifests with no kernel and no
 * root. Exit status: 0 converged (or valid), 1 a device failed or a
 * manifest is invalid, 2 usage or environment error (no ublk, lock held,
 * a corrupt state record). With --json, stdout is JSON on every path.
 */
import * as fs from 'node:fs';
import { parseArgs } from 'node:util';
import { EnvironmentError } from '../errors';
import { UblkControl } from '../kernel/control';
import { hostKernel } from '../reconciler/kernel';
import { defaultConcurrency, MAX_CONCURRENCY } from '../reconciler/concurrency';
import { manifestCachePath, readManifestCache, saveManifestCache } from '../reconciler/manifest-cache-file';
import { acquireLock, LockHeldError } from '../reconciler/lock';
import { PassResult, reconcileOnce } from '../reconciler/reconciler';
import { validateManifests, ValidateResult } from '../reconciler/validate';
import { ReconcileWatcher } from '../reconciler/watcher';
import { CorruptRecordError } from '../server/device-records';
import { DEFAULT_STATE_DIR } from '../server/launcher';

/** The periodic resync's range, in seconds: at least 1 s (no busy loop), at most a day (within Node's timers). */
const RESYNC_MIN_S = 1;
const RESYNC_MAX_S = 86_400;

const USAGE = `usage: ublk-reconcile [--dir DIR] [--state-dir DIR] [--once] [--plan] [--json]
                      [--insecure-permissions] [--resync-interval SECONDS] [--upgrade-servers]
                      [--concurrency N]
       ublk-reconcile --validate [--dir DIR] [--offline] [--json]
  --dir DIR              manifests (*.yaml, *.yml), default /etc/ublk.d
  --state-dir DIR        device records, server logs, lock; default ${DEFAULT_STATE_DIR}
  --once                 one pass, then exit
  --plan                 print the actions a pass would take (with their pre-flight checks); change nothing
  --json                 JSON on stdout: the result (one line per pass when watching), or {"error"}
  --insecure-permissions accept manifests, js modules and links to loop files that users
                         other than root could change (not owned by root, or writable by group/others)
  --upgrade-servers      hand every device whose server runs another ublk-ts version than the one
                         installed over to a new server, live (the upgrade procedure, see README)
  --resync-interval S    seconds between full passes when watching, ${RESYNC_MIN_S} to ${RESYNC_MAX_S} (default 30)
  --concurrency N        device actions (create, recover, delete...) run at once, 1 to ${MAX_CONCURRENCY}
                         (default the CPUs, at least 4, at most 16: here ${defaultConcurrency()}); never two on one device
  --validate             check the manifests (schema, semantics, duplicates, backing files, js modules)
                         with no kernel and no root; exit 0 valid, 1 invalid
  --offline              with --validate: the manifests are for another host, skip its files and modules`;

/** A usage or environment problem: exit status 2, the message on stderr (and as JSON with --json). */
class Fatal extends Error {}

let json = false;

function timestamp(line: string): string {
  return `${new Date().toISOString()} ${line}`;
}

function printResult(result: PassResult): void {
  if (json) {
    console.log(JSON.stringify(result, null, 2));
    return;
  }
  for (const e of result.manifestErrors) console.error(`invalid manifest: ${e}`);
  if (result.devices.length === 0) console.log('no devices');
  for (const d of result.devices) {
    const dev = d.devId !== undefined ? `dev ${d.devId}` : '-';
    const status = d.outcome === 'failed' ? `FAILED: ${d.error}` : d.outcome;
    console.log(
      `${d.action.padEnd(8)} ${d.name.padEnd(24)} ${dev.padEnd(8)} ${status.padEnd(9)} ${d.reason}${d.dataLost ? ' [data-plane state was lost]' : ''}`,
    );
  }
}

function printValidation(result: ValidateResult): void {
  if (json) {
    console.log(JSON.stringify(result, null, 2));
    return;
  }
  for (const e of result.errors) console.error(`invalid manifest: ${e}`);
  for (const m of result.manifests) console.log(`valid    ${m.name.padEnd(24)} ${m.file}:${m.line}`);
  if (result.manifests.length === 0 && result.errors.length === 0) console.log('no manifests');
}

/** The state directory must be a directory (or not exist yet: it is created). */
function checkStateDir(stateDir: string): void {
  let st: fs.Stats;
  try {
    st = fs.statSync(stateDir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw new Fatal(`state directory ${stateDir}: ${(err as NodeJS.ErrnoException).code}`);
  }
  if (!st.isDirectory()) throw new Fatal(`state directory ${stateDir} is not a directory`);
}

function parse(argv: string[]) {
  try {
    return parseArgs({
      args: argv,
      options: {
        dir: { type: 'string', default: '/etc/ublk.d' },
        'state-dir': { type: 'string', default: DEFAULT_STATE_DIR },
        once: { type: 'boolean' },
        plan: { type: 'boolean' },
        json: { type: 'boolean' },
        validate: { type: 'boolean' },
        offline: { type: 'boolean' },
        'insecure-permissions': { type: 'boolean' },
        'upgrade-servers': { type: 'boolean' },
        'resync-interval': { type: 'string', default: '30' },
        concurrency: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    }).values;
  } catch (err) {
    throw new Fatal(`${(err as Error).message}\n${USAGE}`);
  }
}

/** --resync-interval in milliseconds, or a usage error stating the range. */
function resyncMs(text: string): number {
  const seconds = /^\d+(\.\d+)?$/.test(text) ? Number(text) : NaN;
  if (!(seconds >= RESYNC_MIN_S && seconds <= RESYNC_MAX_S)) {
    throw new Fatal(
      `--resync-interval must be a number of seconds from ${RESYNC_MIN_S} to ${RESYNC_MAX_S}, got ${JSON.stringify(text.slice(0, 40))}`,
    );
  }
  return seconds * 1000;
}

/** --concurrency, or a usage error stating the range. */
function concurrencyOf(text: string | undefined): number {
  if (text === undefined) return defaultConcurrency();
  const n = /^\d{1,3}$/.test(text) ? Number(text) : NaN;
  if (!(n >= 1 && n <= MAX_CONCURRENCY)) {
    throw new Fatal(
      `--concurrency must be a whole number from 1 to ${MAX_CONCURRENCY}, got ${JSON.stringify(text.slice(0, 40))}`,
    );
  }
  return n;
}

async function main(argv: string[]): Promise<number> {
  json = argv.includes('--json');
  const values = parse(argv);
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  if (values.offline && !values.validate) throw new Fatal(`--offline goes with --validate\n${USAGE}`);
  const modes = [values.validate, values.once, values.plan].filter(Boolean).length;
  if (values.validate && modes > 1) throw new Fatal(`--validate goes with neither --once nor --plan\n${USAGE}`);
  const resync = resyncMs(values['resync-interval']);
  const concurrency = concurrencyOf(values.concurrency);
  if (!fs.existsSync(values.dir) || !fs.statSync(values.dir).isDirectory()) {
    throw new Fatal(`manifest directory ${values.dir} does not exist or is not a directory`);
  }

  const checkPermissions = process.getuid?.() === 0 && !values['insecure-permissions'];
  if (values.validate) {
    const result = await validateManifests(values.dir, { offline: values.offline, checkPermissions });
    printValidation(result);
    return result.exitCode;
  }

  const opts = {
    dir: values.dir,
    stateDir: values['state-dir'],
    checkPermissions,
    upgradeServers: values['upgrade-servers'],
    concurrency,
    log: json ? undefined : (line: string) => console.error(timestamp(line)),
  };
  checkStateDir(opts.stateDir);

  let control: UblkControl;
  try {
    control = await UblkControl.open();
  } catch (err) {
    if (err instanceof EnvironmentError) throw new Fatal(err.message);
    throw err;
  }

  const kernel = hostKernel(control, opts.stateDir);
  if (values.plan) {
    const result = await reconcileOnce(kernel, { ...opts, planOnly: true, log: undefined });
    printResult(result);
    control.close();
    return result.exitCode;
  }

  let lock;
  try {
    lock = acquireLock(opts.stateDir);
  } catch (err) {
    control.close();
    if (err instanceof LockHeldError) throw new Fatal(err.message);
    throw err;
  }

  if (values.once) {
    try {
      // What the last --once checked: unchanged manifest files are not parsed again (manifest-cache-file.ts).
      const manifestCache = readManifestCache(opts.stateDir);
      const result = await reconcileOnce(kernel, { ...opts, manifestCache, log: undefined });
      printResult(result);
      try {
        saveManifestCache(opts.stateDir, manifestCache);
      } catch (err) {
        // Only the next pass's speed depends on it: said, and the pass's own result stands.
        console.error(`ublk-reconcile: cannot save ${manifestCachePath(opts.stateDir)}: ${(err as Error).message}`);
      }
      return result.exitCode;
    } finally {
      lock.release();
      control.close();
    }
  }

  const watcher = new ReconcileWatcher(kernel, {
    ...opts,
    resyncMs: resync,
    // One JSON line per pass, so a consumer can read the stream line by line.
    onPass: json ? (result) => console.log(JSON.stringify(result)) : undefined,
    onPassError: json ? (err) => console.log(JSON.stringify({ error: err.message, exitCode: 2 })) : undefined,
  });
  watcher.start();
  await new Promise<void>((resolve) => {
    const stop = (signal: string): void => {
      opts.log?.(`${signal}: stopping the watcher (devices and their servers keep running)`);
      void watcher.stop().then(resolve);
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
  lock.release();
  control.close();
  return 0;
}

/** Usage and environment errors, a corrupt record, a failed syscall: a message, not a stack trace. */
function report(err: Error): number {
  const known = err instanceof Fatal || err instanceof CorruptRecordError || 'code' in err;
  const message = known ? err.message : (err.stack ?? err.message);
  console.error(`ublk-reconcile: ${message}`);
  if (json) console.log(JSON.stringify({ error: message.split('\nusage:')[0], exitCode: 2 }));
  return 2;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: Error) => {
    process.exitCode = report(err);
  },
);
