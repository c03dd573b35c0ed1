#!/usr/bin/env node
/**
 * ublk-reconcile — makes the host's ublk devices match the manifests in a
 * directory. Watches by default; --once for one pass; --plan to print
 * what would be done. Exit status: 0 converged, 1 a device failed or a
 * manifest is invalid, 2 usage or environment error (no ublk, lock held).
 */
import * as fs from 'node:fs';
import { parseArgs } from 'node:util';
import { EnvironmentError } from '../errors';
import { UblkControl } from '../kernel/control';
import { hostKernel } from '../reconciler/kernel';
import { acquireLock, LockHeldError } from '../reconciler/lock';
import { DEFAULT_STATE_DIR } from '../server/launcher';
import { PassResult, reconcileOnce } from '../reconciler/reconciler';
import { ReconcileWatcher } from '../reconciler/watcher';

const USAGE = `usage: ublk-reconcile [--dir DIR] [--state-dir DIR] [--once] [--plan] [--json]
                      [--insecure-permissions] [--resync-interval SECONDS]
  --dir DIR              manifests (*.yaml, *.yml), default /etc/ublk.d
  --state-dir DIR        device records, server logs, lock; default ${DEFAULT_STATE_DIR}
  --once                 one pass, then exit
  --plan                 print the actions a pass would take; change nothing
  --json                 machine-readable result (with --once or --plan)
  --insecure-permissions accept manifests writable by group/others or not owned by root`;

function timestamp(line: string): string {
  return `${new Date().toISOString()} ${line}`;
}

function printResult(result: PassResult, json: boolean): void {
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

async function main(argv: string[]): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        dir: { type: 'string', default: '/etc/ublk.d' },
        'state-dir': { type: 'string', default: DEFAULT_STATE_DIR },
        once: { type: 'boolean' },
        plan: { type: 'boolean' },
        json: { type: 'boolean' },
        'insecure-permissions': { type: 'boolean' },
        'resync-interval': { type: 'string', default: '30' },
        help: { type: 'boolean', short: 'h' },
      },
    }));
  } catch (err) {
    console.error(`ublk-reconcile: ${(err as Error).message}\n${USAGE}`);
    return 2;
  }
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const resyncSeconds = Number(values['resync-interval']);
  if (!Number.isFinite(resyncSeconds) || resyncSeconds <= 0) {
    console.error(`ublk-reconcile: --resync-interval must be a positive number of seconds\n${USAGE}`);
    return 2;
  }
  if (!fs.existsSync(values.dir) || !fs.statSync(values.dir).isDirectory()) {
    console.error(`ublk-reconcile: manifest directory ${values.dir} does not exist or is not a directory`);
    return 2;
  }
  const opts = {
    dir: values.dir,
    stateDir: values['state-dir'],
    checkPermissions: process.getuid?.() === 0 && !values['insecure-permissions'],
    log: values.json ? undefined : (line: string) => console.error(timestamp(line)),
  };

  let control: UblkControl;
  try {
    control = await UblkControl.open();
  } catch (err) {
    if (err instanceof EnvironmentError) {
      console.error(`ublk-reconcile: ${err.message}`);
      return 2;
    }
    throw err;
  }

  const kernel = hostKernel(control, opts.stateDir);
  if (values.plan) {
    const result = await reconcileOnce(kernel, { ...opts, planOnly: true, log: undefined });
    printResult(result, values.json ?? false);
    return result.exitCode;
  }

  let lock;
  try {
    lock = acquireLock(opts.stateDir);
  } catch (err) {
    if (err instanceof LockHeldError) {
      console.error(`ublk-reconcile: ${err.message}`);
      return 2;
    }
    throw err;
  }

  if (values.once) {
    const result = await reconcileOnce(kernel, { ...opts, log: undefined });
    printResult(result, values.json ?? false);
    lock.release();
    control.close();
    return result.exitCode;
  }

  const watcher = new ReconcileWatcher(kernel, { ...opts, resyncMs: resyncSeconds * 1000 });
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

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: Error) => {
    console.error(`ublk-reconcile: ${err.stack ?? err.message}`);
    process.exitCode = 2;
  },
);
