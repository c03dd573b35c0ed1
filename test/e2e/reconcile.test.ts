import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  listDevices,
  manifest,
  outcomeOf,
  requireUblk,
  run,
  ublkctl,
  ublkctlJson,
  useManifestDir,
  waitFor,
} from './helpers';

const MiB = 1024 * 1024;

describe('ublk-reconcile (real ublk driver)', function () {
  requireUblk(this);
  const manifests = useManifestDir(this);
  const { write, reconcile, once } = manifests;

  afterEach(() => manifests.cleanup());

  const outcome = outcomeOf;

  function sizeOf(blockPath: string): number {
    return Number(run('blockdev', ['--getsize64', blockPath]).stdout.trim());
  }

  it('creates a device for a dropped manifest with its size, queues and depth; a second pass does nothing', () => {
    write('scratch.yaml', manifest('scratch', 'target:\n  type: memory\nsize: 64MiB\nqueues: 2\ndepth: 32'));
    const first = once();
    assert.equal(first.exitCode, 0, JSON.stringify(first));
    const made = outcome(first, 'scratch');
    assert.deepEqual([made.action, made.outcome], ['create', 'ok']);
    const id = made.devId!;
    assert.equal(sizeOf(`/dev/ublkb${id}`), 64 * MiB);
    assert.equal(fs.readdirSync(`/sys/block/ublkb${id}/mq`).length, 2);
    assert.equal(fs.readFileSync(`/sys/block/ublkb${id}/mq/0/nr_tags`, 'utf8').trim(), '32');

    const second = once();
    assert.equal(second.exitCode, 0);
    assert.deepEqual(
      second.devices.map((d) => [d.name, d.action, d.outcome]),
      [['scratch', 'noop', 'unchanged']],
    );
    const listed = ublkctlJson<Array<{ id: number; manifest?: string }>>(['list', '--state-dir', manifests.stateDir()]);
    assert.equal(listed.find((d) => d.id === id)?.manifest, 'scratch');
  });

  it('re-creates a device whose spec changed beyond its size while unused (with consent for memory), and deletes it when its manifest goes', () => {
    write('data.yaml', manifest('data', 'target:\n  type: memory\nsize: 32MiB'));
    const id = outcome(once(), 'data').devId!;
    // A memory device's data lives only in it: re-creating it takes the manifest's consent.
    write('data.yaml', manifest('data', 'target:\n  type: memory\nsize: 48MiB\ndepth: 64'));
    const refused = outcome(once(), 'data');
    assert.equal(refused.action, 'drift', JSON.stringify(refused));
    assert.match(refused.reason, /would discard its data/);
    write('data.yaml', manifest('data', 'target:\n  type: memory\nsize: 48MiB\ndepth: 64\nallowDataLoss: true'));
    const changed = once();
    const re = outcome(changed, 'data');
    assert.deepEqual([re.action, re.outcome], ['recreate', 'ok'], JSON.stringify(re));
    assert.equal(sizeOf(`/dev/ublkb${re.devId}`), 48 * MiB);

    fs.rmSync(path.join(manifests.dir(), 'data.yaml'));
    const removed = once();
    const del = outcome(removed, 'data');
    assert.deepEqual([del.action, del.outcome], ['delete', 'ok']);
    assert.ok(!listDevices().some((d) => d.id === re.devId || d.id === id), 'device deleted');
  });

  it('reports drift for a device changed while mounted and leaves it and its data alone', () => {
    write('fs.yaml', manifest('fs', 'target:\n  type: memory\nsize: 64MiB'));
    const dev = outcome(once(), 'fs');
    const blockPath = `/dev/ublkb${dev.devId}`;
    run('mkfs.ext4', ['-q', '-F', blockPath]);
    const mnt = fs.mkdtempSync('/tmp/ublk-ts-mnt-');
    run('mount', [blockPath, mnt]);
    try {
      run('dd', ['if=/dev/urandom', `of=${mnt}/keep`, 'bs=64k', 'count=16', 'status=none']);
      const sum = run('sha256sum', [`${mnt}/keep`]).stdout.split(' ')[0];
      write('fs.yaml', manifest('fs', 'target:\n  type: memory\nsize: 128MiB\ndepth: 64'));
      const result = once();
      const drift = outcome(result, 'fs');
      assert.equal(drift.action, 'drift');
      assert.equal(result.exitCode, 1);
      assert.equal(sizeOf(blockPath), 64 * MiB, 'device untouched');
      assert.equal(run('sha256sum', [`${mnt}/keep`]).stdout.split(' ')[0], sum, 'data intact');
      const listed = ublkctlJson<Array<{ id: number; lastError?: string }>>([
        'list',
        '--state-dir',
        manifests.stateDir(),
      ]);
      assert.match(listed.find((d) => d.id === dev.devId)?.lastError ?? '', /in use/);
    } finally {
      run('umount', [mnt]);
    }
  });

  it('never touches a device made with ublkctl add', () => {
    const other = ublkctlJson<{ id: number }>([
      'add',
      '-t',
      'null',
      '--size',
      '16MiB',
      '--state-dir',
      manifests.stateDir(),
    ]);
    try {
      const result = once();
      assert.equal(result.exitCode, 0);
      assert.equal(result.devices.length, 0, JSON.stringify(result));
      assert.ok(listDevices().some((d) => d.id === other.id && d.state === 'LIVE'));
    } finally {
      ublkctl(['del', String(other.id), '--state-dir', manifests.stateDir()]);
    }
  });

  it("applies a valid manifest beside an invalid one, reports the invalid one, exits 1, and leaves an invalid manifest's device as it is", () => {
    write('good.yaml', manifest('good', 'target:\n  type: null\nsize: 16MiB'));
    write('bad.yaml', manifest('bad', 'target:\n  type: null\nsize: 16MiB\nqueues: two'));
    const result = once();
    assert.equal(result.exitCode, 1);
    assert.deepEqual([outcome(result, 'good').action, outcome(result, 'good').outcome], ['create', 'ok']);
    assert.equal(result.manifestErrors.length, 1, JSON.stringify(result.manifestErrors));
    assert.match(result.manifestErrors[0]!, /bad\.yaml:\d+:\d+: spec\.queues: /);

    const goodId = outcome(result, 'good').devId!;
    write('good.yaml', manifest('good', 'target:\n  type: null\nsize: 16MiB\ndepth: 0'));
    const broken = once();
    assert.equal(broken.exitCode, 1);
    assert.equal(outcome(broken, 'good').action, 'hold');
    assert.ok(
      listDevices().some((d) => d.id === goodId && d.state === 'LIVE'),
      'device left as it was',
    );
  });

  it('lets only one reconciler run: a second exits 2 naming the lock', async () => {
    await manifests.startWatcher([]);
    const second = reconcile(['--once']);
    assert.equal(second.status, 2);
    assert.match(second.stderr, /holds the lock .*reconcile\.lock/);
  });

  it('watcher acts on a manifest added, changed and removed through file events, not the hourly resync', async () => {
    const watcher = await manifests.startWatcher();
    const log = (): string => watcher.log();

    // The resync interval is an hour, so a pass within the bound that names the file came from its event.
    // How quickly it comes is a benchmark's question, not this test's.
    const noticed = async (pattern: RegExp, what: string): Promise<void> => {
      const from = log().length;
      await waitFor(() => pattern.test(log().slice(from)), 60_000, `the watcher to notice ${what}`);
    };

    write('w.yaml', manifest('w', 'target:\n  type: null\nsize: 16MiB'));
    await noticed(/pass \(.*added w\.yaml/, 'the new manifest');
    await waitFor(() => /create w dev \d+/.test(log()), 60_000, 'the device');
    const id = Number(/create w dev (\d+)/.exec(log())![1]);
    assert.ok(fs.existsSync(`/dev/ublkb${id}`));

    write('w.yaml', manifest('w', 'target:\n  type: null\nsize: 32MiB\ndepth: 64'));
    await noticed(/pass \(.*(added|changed) w\.yaml/, 'the change');
    await waitFor(() => /recreate w dev \d+/.test(log()), 60_000, 'the re-creation');

    fs.rmSync(path.join(manifests.dir(), 'w.yaml'));
    await noticed(/pass \(.*removed w\.yaml/, 'the removal');
    await waitFor(() => /delete w dev \d+/.test(log()), 60_000, 'the deletion');
  });

  it('refuses group-writable manifests and directories unless --insecure-permissions', () => {
    write('loose.yaml', manifest('loose', 'target:\n  type: null\nsize: 16MiB'), 0o664);
    const refused = once();
    assert.equal(refused.exitCode, 1);
    assert.match(refused.manifestErrors.join('\n'), /writable by group\/others/);
    assert.equal(refused.devices.length, 0);
    const insecure = reconcile(['--once', '--json', '--insecure-permissions']);
    assert.equal(insecure.status, 0, insecure.stdout + insecure.stderr);
    fs.chmodSync(path.join(manifests.dir(), 'loose.yaml'), 0o644);
    fs.chmodSync(manifests.dir(), 0o775);
    const looseDir = once();
    assert.equal(looseDir.exitCode, 1);
    assert.match(looseDir.manifestErrors.join('\n'), /writable by group\/others/);
    fs.chmodSync(manifests.dir(), 0o755);
  });

  it('refuses a js module another user could change before any of its code runs as root, unless --insecure-permissions', () => {
    // A user's directory beside the manifests; the module in it is root's, but the user may swap it.
    const userDir = path.join(manifests.stateDir(), 'user-dir');
    fs.mkdirSync(userDir, { mode: 0o755 });
    fs.chownSync(userDir, 65534, 65534);
    const marker = path.join(manifests.stateDir(), 'module-ran');
    const module = path.join(userDir, 'target.js');
    fs.writeFileSync(
      module,
      `require('fs').writeFileSync(${JSON.stringify(marker)}, 'ran');\n` +
        `exports.createTarget = () => ({ handleIo: (io) => (io.op === 'read' ? (io.buffer.fill(0), io.length) : io.length) });\n`,
      { mode: 0o644 },
    );
    write('user-module.yaml', manifest('user-module', `target:\n  type: js\n  module: ${module}\nsize: 16MiB`));
    const refused = once();
    assert.equal(refused.exitCode, 1);
    const device = outcome(refused, 'user-module');
    assert.equal(device.outcome, 'failed');
    assert.match(
      device.error ?? '',
      /spec\.target\.module: refusing .*user-dir is owned by uid 65534; .*--insecure-permissions/,
    );
    assert.ok(!fs.existsSync(marker), 'the module ran as root');
    const insecure = reconcile(['--once', '--json', '--insecure-permissions']);
    assert.equal(insecure.status, 0, insecure.stdout + insecure.stderr);
    assert.ok(fs.existsSync(marker));
  });
});
