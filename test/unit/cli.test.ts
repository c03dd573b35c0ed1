/**
 * The command lines' edges that need no kernel: arguments checked before
 * the control device is opened, --json on every path, --validate for CI.
 * They run the built CLIs as a user would; where the host has ublk, the
 * environment checks simply pass and the argument checks still come first.
 */
import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { UblkControl } from '../../src/kernel/control';
import { validateManifests } from '../../src/reconciler/validate';

const DIST = path.resolve(__dirname, '..', '..');
const UBLKCTL = path.join(DIST, 'src', 'cli', 'ublkctl.js');
const RECONCILE = path.join(DIST, 'src', 'cli', 'ublk-reconcile.js');

function cli(script: string, args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [script, ...args], { encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function manifest(name: string, spec: string): string {
  return `apiVersion: ublk-ts/v1\nkind: UblkDevice\nmetadata:\n  name: ${name}\nspec:\n${spec.replace(/^/gm, '  ')}\n`;
}

describe('ublkctl arguments', () => {
  for (const args of [
    ['del', '4294967301'],
    ['recover', '4294967301'],
    ['del', '1048576'],
    ['del', '-1'],
    ['del', '0x5'],
  ]) {
    it(`refuses ${args.join(' ')} as a device id before any kernel call, with the range`, () => {
      const r = cli(UBLKCTL, args);
      assert.equal(r.status, 2);
      assert.match(r.stderr, /^ublkctl: (not a device id: ".*" \(device ids are 0 to 1048575\)|.*Unknown option)/);
      assert.doesNotMatch(r.stderr, /ublk-control/);
    });
  }

  it('prints errors as JSON on stdout with --json', () => {
    const r = cli(UBLKCTL, ['del', '4294967301', '--json']);
    assert.equal(r.status, 2);
    const out = JSON.parse(r.stdout) as { error: string; exitCode: number };
    assert.equal(out.exitCode, 2);
    assert.match(out.error, /not a device id/);
  });

  it('checks ids in the control wrapper too, so a library caller cannot wrap onto another device', async () => {
    const sent: number[] = [];
    const control = Object.create(UblkControl.prototype) as UblkControl;
    Object.assign(control, { dev: { delDev: async (id: number) => void sent.push(id) } });
    await assert.rejects(
      control.deleteDevice(4294967301),
      /DEL_DEV: EINVAL \(device id must be 0 to 1048575, got 4294967301\)/,
    );
    await control.deleteDevice(5);
    assert.deepEqual(sent, [5]);
  });
});

describe('ublk-reconcile arguments', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ublk-ts-cli-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  for (const value of ['0.0001', '0', '3000000', 'soon', '-5']) {
    it(`refuses --resync-interval ${value}, stating the range`, () => {
      const r = cli(RECONCILE, ['--dir', dir, `--resync-interval=${value}`]);
      assert.equal(r.status, 2);
      assert.match(r.stderr, /--resync-interval must be a number of seconds from 1 to 86400/);
    });
  }

  for (const value of ['0', '65', 'many', '-1', '2.5']) {
    it(`refuses --concurrency ${value}, stating the range`, () => {
      const r = cli(RECONCILE, ['--dir', dir, `--concurrency=${value}`]);
      assert.equal(r.status, 2);
      assert.match(r.stderr, /--concurrency must be a whole number from 1 to 64/);
    });
  }

  it('gives JSON on stdout on error paths with --json: bad option, bad directory, bad state directory', () => {
    for (const args of [
      ['--bogus'],
      ['--dir', path.join(dir, 'missing')],
      ['--dir', dir, '--state-dir', '/etc/passwd', '--once'],
    ]) {
      const r = cli(RECONCILE, [...args, '--json']);
      assert.equal(r.status, 2, r.stderr);
      const out = JSON.parse(r.stdout) as { error: string; exitCode: number };
      assert.equal(out.exitCode, 2);
      assert.ok(out.error.length > 0);
    }
  });

  it('names a bad --state-dir without a stack trace', () => {
    const r = cli(RECONCILE, ['--dir', dir, '--state-dir', '/etc/passwd', '--once']);
    assert.equal(r.status, 2);
    assert.equal(r.stderr.trim(), 'ublk-reconcile: state directory /etc/passwd is not a directory');
  });

  it('--validate checks manifests with no kernel: exit 0 when valid, 1 naming each problem', () => {
    fs.writeFileSync(path.join(dir, 'a.yaml'), manifest('a', 'target: {type: null}\nsize: 1MiB'));
    const ok = cli(RECONCILE, ['--validate', '--dir', dir, '--json']);
    assert.equal(ok.status, 0, ok.stderr);
    assert.deepEqual(JSON.parse(ok.stdout), {
      manifests: [{ name: 'a', file: 'a.yaml', line: 1 }],
      errors: [],
      exitCode: 0,
    });
    fs.writeFileSync(path.join(dir, 'b.yaml'), manifest('a', 'target: {type: null}\nsize: 1MiB'));
    fs.writeFileSync(path.join(dir, 'c.yaml'), manifest('c', `target: {type: loop, file: ${dir}/missing.img}`));
    const bad = cli(RECONCILE, ['--validate', '--dir', dir]);
    assert.equal(bad.status, 1);
    assert.match(bad.stderr, /a\.yaml:4:9: metadata\.name: name "a" is also used by b\.yaml:4:9/);
    assert.match(bad.stderr, /c\.yaml:1: spec\.target\.file: .*missing\.img does not exist/);
    const offline = cli(RECONCILE, ['--validate', '--offline', '--dir', dir]);
    assert.equal(offline.status, 1);
    assert.doesNotMatch(offline.stderr, /missing\.img/);
  });
});

describe('manifest validation (--validate)', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ublk-ts-validate-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('pre-flights js modules and loop files unless offline', async () => {
    const bad = path.join(dir, 'bad.js');
    fs.writeFileSync(bad, 'exports.nothing = 1;\n');
    const ro = path.join(dir, 'ro.img');
    fs.writeFileSync(ro, Buffer.alloc(4096));
    fs.writeFileSync(path.join(dir, 'js.yaml'), manifest('js', `target: {type: js, module: ${bad}}\nsize: 1MiB`));
    fs.writeFileSync(
      path.join(dir, 'loop.yaml'),
      manifest('loop', `target: {type: loop, file: ${ro}}\nreadOnly: true`),
    );
    const online = await validateManifests(dir);
    assert.deepEqual(online.errors, [
      `js.yaml:1: spec.target.module: ${bad} does not export a target: expected a createTarget(ctx) function`,
    ]);
    assert.deepEqual(
      online.manifests.map((m) => m.name),
      ['loop'],
    );
    const offline = await validateManifests(dir, { offline: true });
    assert.deepEqual(offline.errors, []);
    assert.equal(offline.exitCode, 0);
  });

  it('checks queues against the kernel limit, not this host, when offline', async () => {
    fs.writeFileSync(path.join(dir, 'q.yaml'), manifest('q', 'target: {type: null}\nsize: 1MiB\nqueues: 4000'));
    assert.equal((await validateManifests(dir, { offline: true })).exitCode, 0);
    fs.writeFileSync(path.join(dir, 'q.yaml'), manifest('q', 'target: {type: null}\nsize: 1MiB\nqueues: 4097'));
    assert.equal((await validateManifests(dir, { offline: true })).exitCode, 1);
  });
});
