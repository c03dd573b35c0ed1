/**
 * Files a manifest names, as a root server must see them: a js module
 * that others could change is code they run as root, and a loop file
 * reached through a link others can re-point may be swapped for /dev/sda.
 * Runs as root on the host; the plants are made as nobody with setpriv, in
 * a directory under /run (root's, 0755) so that only what a test plants is
 * untrusted.
 */
import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { SpecError } from '../../src/errors';
import { checkedOpener, openBacking } from '../../src/device/backing';
import { prepareJsTarget } from '../../src/device/js-queues';
import { moduleTrustProblem, walkPath } from '../../src/device/trusted-path';
import { LoadedManifest } from '../../src/manifest';
import { preflight } from '../../src/reconciler/preflight';
import { normalizeDeviceSpec } from '../../src/spec/device-spec';

/** Runs a shell command as nobody, as a local user without privileges would. */
function asNobody(script: string): void {
  const r = spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', 'sh', '-c', script], {
    encoding: 'utf8',
  });
  assert.equal(r.status, 0, `${script} as nobody: ${r.stderr}`);
}

function refusal(field: string, pattern: RegExp): (err: unknown) => boolean {
  return (err) => {
    assert.ok(err instanceof SpecError, `expected a SpecError, got ${String(err)}`);
    assert.ok(err.field.endsWith(field), err.field);
    assert.match(err.message, pattern);
    return true;
  };
}

describe('files named by manifests, seen by root', function () {
  let base: string;
  let marker: string;

  before(function () {
    if (process.geteuid?.() !== 0 || !fs.existsSync('/run')) this.skip();
  });

  beforeEach(() => {
    base = fs.mkdtempSync('/run/ublk-ts-trust-');
    fs.chmodSync(base, 0o755);
    fs.mkdirSync(path.join(base, 'root-dir'), { mode: 0o755 });
    // A user's own directory (root makes it: nobody may not write in `base`).
    fs.mkdirSync(path.join(base, 'user-dir'), { mode: 0o755 });
    fs.chownSync(path.join(base, 'user-dir'), 65534, 65534);
    marker = path.join(base, 'module-ran');
  });

  afterEach(() => fs.rmSync(base, { recursive: true, force: true }));

  /** A target module that leaves a mark when its code runs. */
  function moduleText(): string {
    return `require('fs').writeFileSync(${JSON.stringify(marker)}, 'ran');
exports.createTarget = () => ({ handleIo: () => 0 });
exports.setup = () => 'shared';\n`;
  }

  function jsSpec(module: string): ReturnType<typeof normalizeDeviceSpec> {
    return normalizeDeviceSpec({ target: { type: 'js', module }, size: '1MiB' }, { maxQueues: 1 });
  }

  describe('js modules', () => {
    it("loads a module that only root can change, with every directory above it root's", async () => {
      const module = path.join(base, 'root-dir', 'target.js');
      fs.writeFileSync(module, moduleText(), { mode: 0o644 });
      assert.equal((await prepareJsTarget(jsSpec(module), { checkPermissions: true }))?.shared, 'shared');
      assert.ok(fs.existsSync(marker));
    });

    it('fails closed: a module path that cannot be walked (missing, a link loop) is refused, never loaded', async () => {
      // The spec was valid when it was made; the file is gone (or not yet back) when the server starts.
      const specFor = (module: string): ReturnType<typeof jsSpec> => {
        const real = path.join(base, 'root-dir', 'real.js');
        fs.writeFileSync(real, moduleText(), { mode: 0o644 });
        const spec = jsSpec(real);
        fs.rmSync(real);
        return { ...spec, target: { type: 'js', module, options: {} } };
      };
      const missing = path.join(base, 'user-dir', 'later.js');
      await assert.rejects(
        prepareJsTarget(specFor(missing), { checkPermissions: true }),
        refusal('target.module', /later\.js does not exist$/),
      );
      const loop = path.join(base, 'user-dir', 'loop.js');
      asNobody(`ln -s ${loop} ${loop}`);
      await assert.rejects(
        prepareJsTarget(specFor(loop), { checkPermissions: true }),
        refusal('target.module', /(cannot be checked \(ELOOP\)|does not exist)/),
      );
      assert.equal(moduleTrustProblem(loop) !== undefined, true, 'a link loop is a problem, not "safe"');
      assert.ok(!fs.existsSync(marker));
    });

    const cases: Array<[string, () => string, RegExp]> = [
      [
        'a module another user owns',
        () => {
          const module = path.join(base, 'user-dir', 'target.js');
          asNobody(`cat > ${module} <<'EOF'\n${moduleText()}EOF`);
          return module;
        },
        /user-dir is owned by uid 65534/,
      ],
      [
        "root's module in a directory another user owns",
        () => {
          const module = path.join(base, 'user-dir', 'target.js');
          fs.writeFileSync(module, moduleText(), { mode: 0o644 });
          return module;
        },
        /user-dir is owned by uid 65534/,
      ],
      [
        'a module anyone may write',
        () => {
          const module = path.join(base, 'root-dir', 'target.js');
          fs.writeFileSync(module, moduleText());
          fs.chmodSync(module, 0o666);
          return module;
        },
        /target\.js is writable by group\/others \(mode 0666\)/,
      ],
      [
        "a link to root's module, in a directory another user owns",
        () => {
          const real = path.join(base, 'root-dir', 'target.js');
          fs.writeFileSync(real, moduleText(), { mode: 0o644 });
          const link = path.join(base, 'user-dir', 'target.js');
          asNobody(`ln -s ${real} ${link}`);
          return link;
        },
        /user-dir\/target\.js is a symbolic link others could re-point: .*user-dir is owned by uid 65534/,
      ],
    ];
    for (const [what, plant, why] of cases) {
      it(`refuses ${what}, before any of its code runs`, async () => {
        const spec = jsSpec(plant());
        await assert.rejects(prepareJsTarget(spec, { checkPermissions: true }), refusal('target.module', why));
        assert.ok(!fs.existsSync(marker), 'the module ran');
      });
    }

    it('loads a module from a root-owned directory inside a sticky one (a checkout under /tmp), not through a link another user put there', async () => {
      const shared = path.join(base, 'shared');
      fs.mkdirSync(shared);
      fs.chmodSync(shared, 0o1777);
      fs.mkdirSync(path.join(shared, 'clone'), { mode: 0o755 });
      const module = path.join(shared, 'clone', 'target.js');
      fs.writeFileSync(module, moduleText(), { mode: 0o644 });
      assert.equal((await prepareJsTarget(jsSpec(module), { checkPermissions: true }))?.shared, 'shared');
      fs.rmSync(marker);
      const link = path.join(shared, 'evil.js');
      asNobody(`ln -s ${module} ${link}`);
      await assert.rejects(
        prepareJsTarget(jsSpec(link), { checkPermissions: true }),
        refusal(
          'target.module',
          /evil\.js is a symbolic link others could re-point: .*shared is writable by group\/others \(mode 1777\)/,
        ),
      );
      assert.ok(!fs.existsSync(marker), 'the module ran');
    });

    it("refuses it in the reconciler's pre-flight too, which loads the module in a process of its own", async () => {
      const module = path.join(base, 'user-dir', 'target.js');
      asNobody(`cat > ${module} <<'EOF'\n${moduleText()}EOF`);
      const manifest = {
        name: 'm',
        file: 'm.yaml',
        line: 1,
        spec: { target: { type: 'js', module }, size: '1MiB' },
      } as unknown as LoadedManifest;
      await assert.rejects(
        preflight(manifest, { checkPermissions: true }),
        refusal('target.module', /m\.yaml:1: spec\.target\.module$|user-dir is owned by uid 65534/),
      );
      assert.ok(!fs.existsSync(marker), 'the module ran');
    });

    it('loads it all the same with the permission check turned off (--insecure-permissions)', async () => {
      const module = path.join(base, 'user-dir', 'target.js');
      asNobody(`cat > ${module} <<'EOF'\n${moduleText()}EOF`);
      assert.equal((await prepareJsTarget(jsSpec(module), { checkPermissions: false }))?.shared, 'shared');
    });
  });

  describe('loop files', () => {
    let victim: string;
    const victimText = 'stands for /dev/sda\n'.padEnd(4096, '.');

    beforeEach(() => {
      victim = path.join(base, 'root-dir', 'victim');
      fs.writeFileSync(victim, victimText, { mode: 0o600 });
    });

    function loopSpec(file: string): ReturnType<typeof normalizeDeviceSpec> {
      return normalizeDeviceSpec({ target: { type: 'loop', file, directIo: false }, size: 4096 }, { maxQueues: 1 });
    }

    it("serves a user's own image in the user's directory", () => {
      const image = path.join(base, 'user-dir', 'disk.img');
      asNobody(`truncate -s 1M ${image}`);
      const backing = openBacking(loopSpec(image), { checkPermissions: true })!;
      assert.equal(fs.fstatSync(backing.fd).ino, fs.statSync(image).ino);
      backing.close();
    });

    it('refuses an image swapped for a link to another file, on start and on recovery', () => {
      const image = path.join(base, 'user-dir', 'disk.img');
      asNobody(`truncate -s 1M ${image}`);
      const spec = loopSpec(image);
      asNobody(`rm ${image} && ln -s ${victim} ${image}`);
      for (const recoverDevId of [undefined, 4]) {
        assert.throws(
          () => openBacking(spec, { checkPermissions: true, recoverDevId }),
          refusal(
            'target.file',
            /disk\.img is a symbolic link others could re-point: .*user-dir is owned by uid 65534/,
          ),
        );
      }
      assert.equal(fs.readFileSync(victim, 'utf8'), victimText);
    });

    it('creates no file through a directory link others could re-point, and never unlinks a file it did not make', () => {
      const elsewhere = path.join(base, 'root-dir', 'elsewhere');
      fs.mkdirSync(elsewhere);
      asNobody(`ln -s ${elsewhere} ${path.join(base, 'user-dir', 'vm')}`);
      const file = path.join(base, 'user-dir', 'vm', 'disk.img');
      const spec = normalizeDeviceSpec(
        { target: { type: 'loop', file, create: true, directIo: false }, size: 4096 },
        { maxQueues: 1 },
      );
      assert.throws(
        () => openBacking(spec, { checkPermissions: true }),
        refusal('target.file', /refusing to create .*disk\.img: .*vm is a symbolic link others could re-point/),
      );
      assert.deepEqual(fs.readdirSync(elsewhere), [], 'root created nothing where the link pointed');

      // Made in the user's own directory, then replaced before the device is given up: the
      // cleanup unlinks only the file it made, checked by device and inode, not whatever has the name now.
      const own = path.join(base, 'user-dir', 'own.img');
      const backing = openBacking(
        normalizeDeviceSpec(
          { target: { type: 'loop', file: own, create: true, directIo: false }, size: 4096 },
          {
            maxQueues: 1,
          },
        ),
        { checkPermissions: true },
      )!;
      asNobody(`mv ${own} ${own}.old && echo theirs > ${own}`);
      backing.close({ discardCreated: true });
      assert.equal(fs.readFileSync(own, 'utf8'), 'theirs\n', 'the file now at that name is not the one root made');
    });

    it("follows a link that only root could have made (like /dev/disk/by-id's)", () => {
      const link = path.join(base, 'root-dir', 'by-id');
      fs.symlinkSync(victim, link);
      const backing = openBacking(loopSpec(link), { checkPermissions: true })!;
      assert.equal(fs.fstatSync(backing.fd).ino, fs.statSync(victim).ino);
      backing.close();
    });

    it('never serves a file swapped in between the check and the open', () => {
      const image = path.join(base, 'user-dir', 'disk.img');
      asNobody(`truncate -s 1M ${image}`);
      const open = checkedOpener(image, true);
      asNobody(`mv ${image} ${image}.old && truncate -s 1M ${image}`);
      assert.throws(() => open(fs.constants.O_RDWR), refusal('target.file', /replaced while it was being opened/));
      asNobody(`rm ${image} && ln -s ${victim} ${image}`);
      assert.throws(() => open(fs.constants.O_RDWR), refusal('target.file', /replaced while it was being opened/));
    });

    it('walks links by hand, naming the first one others could re-point', () => {
      const link = path.join(base, 'user-dir', 'hop');
      asNobody(`ln -s ${path.join(base, 'root-dir')} ${link}`);
      const walk = walkPath(path.join(link, 'victim'));
      assert.equal(walk.resolved, victim);
      assert.match(walk.linkProblem!, /hop is a symbolic link others could re-point: .*user-dir is owned by uid 65534/);
    });
  });
});
