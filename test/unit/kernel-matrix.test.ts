/**
 * The kernel matrix's pure parts, on the host: which Debian package is a leg's kernel, where
 * apt looks for it, and in what order each leg's guest loads its modules. The fetch and the
 * boot themselves are exercised by every VM run.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  compareReleases,
  ensureKernel,
  initScript,
  type KernelManifest,
  KERNEL_LEGS,
  kernelLeg,
  kernelLegNames,
  legModules,
  legSourcesFile,
  loadOrder,
  moduleDependencies,
  type ModuleInfo,
  modinfoValues,
  newestRelease,
  parseDeb822Sources,
  resolveModules,
} from '../vm';

const BOOKWORM_HOST = parseDeb822Sources(`Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
`);

/** Package names as trixie, trixie-security and trixie-backports list them (abridged). */
const ARCHIVE = [
  'linux-image-6.12.9+deb13-amd64-unsigned',
  'linux-image-6.12.95+deb13-amd64-unsigned',
  'linux-image-6.12.117+deb13-amd64-unsigned',
  'linux-image-6.12.117+deb13-amd64',
  'linux-image-6.12.117+deb13-amd64-dbg',
  'linux-image-6.12.118+deb13-cloud-amd64-unsigned',
  'linux-image-6.12.118+deb13-rt-amd64-unsigned',
  'linux-image-6.12.95+deb12-amd64-unsigned',
  'linux-binary-7.2.12+deb13-amd64',
  'linux-binary-7.3.4+deb13-amd64',
  'linux-binary-7.3.10+deb13-cloud-amd64',
  'linux-binary-7.3.11+deb13-rt-amd64',
  'linux-modules-7.3.12+deb13-amd64',
  'linux-image-7.3.12+deb13-amd64',
  'linux-binary-7.30.1+deb13-amd64',
];

describe('kernel matrix: legs', () => {
  it('lists 6.12 and 7.3, 6.12 first (the default of npm run vm)', () => {
    assert.deepEqual(kernelLegNames(), ['6.12', '7.3']);
  });

  it('rejects an unknown leg naming the ones there are', () => {
    assert.throws(() => kernelLeg('6.1'), /unknown kernel "6\.1": expected one of 6\.12, 7\.3/);
  });

  it("6.12 is trixie's -unsigned image (not bookworm-backports' deb12 build, nor -rt, -cloud or -dbg)", () => {
    const leg = kernelLeg('6.12');
    assert.equal(newestRelease(leg, ARCHIVE), '6.12.117+deb13');
    assert.deepEqual(leg.packagesFor('6.12.117+deb13'), ['linux-image-6.12.117+deb13-amd64-unsigned']);
    assert.equal(leg.kernelVersion('6.12.117+deb13'), '6.12.117+deb13-amd64');
  });

  it('7.3 is the plain linux-binary with its modules and base packages (no 7.2, 7.30, -rt or -cloud)', () => {
    const leg = kernelLeg('7.3');
    assert.equal(newestRelease(leg, ARCHIVE), '7.3.4+deb13');
    assert.deepEqual(leg.packagesFor('7.3.4+deb13'), [
      'linux-binary-7.3.4+deb13-amd64',
      'linux-modules-7.3.4+deb13-amd64',
      'linux-base-7.3.4+deb13-amd64',
    ]);
  });

  it('finds no release when the archive has none for the leg', () => {
    assert.equal(newestRelease(kernelLeg('7.3'), ['linux-binary-7.2.12+deb13-amd64']), undefined);
  });

  it('takes apt-cache pkgnames lines with surrounding blanks', () => {
    assert.equal(newestRelease(kernelLeg('7.3'), ['', '  linux-binary-7.3.4+deb13-amd64  ']), '7.3.4+deb13');
  });

  it("each leg's prefix lists its packages", () => {
    for (const leg of KERNEL_LEGS) {
      const release = newestRelease(leg, ARCHIVE);
      assert.ok(release !== undefined, leg.name);
      assert.ok(leg.packagesFor(release)[0].startsWith(leg.packagePrefix), leg.name);
    }
  });
});

describe('kernel matrix: release order', () => {
  it('compares by numbers, not text', () => {
    const sorted = ['6.12.117+deb13', '6.12.9+deb13', '6.12.95+deb13', '6.12.100+deb13'].sort(compareReleases);
    assert.deepEqual(sorted, ['6.12.9+deb13', '6.12.95+deb13', '6.12.100+deb13', '6.12.117+deb13']);
  });

  it('puts an ABI respin (+deb13.1) after its base release and before the next one', () => {
    assert.ok(compareReleases('6.12.115+deb13.1', '6.12.115+deb13') > 0);
    assert.ok(compareReleases('6.12.115+deb13.1', '6.12.116+deb13') < 0);
    assert.equal(
      newestRelease(kernelLeg('6.12'), ARCHIVE.concat('linux-image-6.12.117+deb13.1-amd64-unsigned')),
      '6.12.117+deb13.1',
    );
  });

  it('ignores the flavour, so kernel versions (cache folders) order like releases', () => {
    assert.ok(compareReleases('6.12.115+deb13.1-amd64', '6.12.115+deb13-amd64') > 0);
    assert.ok(compareReleases('6.12.118+deb13-amd64', '6.12.95+deb12-amd64') > 0);
  });
});

describe('kernel matrix: apt sources', () => {
  it('points 6.12 at trixie and trixie-security on the mirrors the machine uses for bookworm', () => {
    const text = legSourcesFile(kernelLeg('6.12'), BOOKWORM_HOST, 'amd64');
    const sources = parseDeb822Sources(text);
    assert.deepEqual(
      sources.map((s) => [s.uris[0], s.suites[0]]),
      [
        ['http://deb.debian.org/debian', 'trixie'],
        ['http://deb.debian.org/debian-security', 'trixie-security'],
      ],
    );
    assert.ok(sources.every((s) => s.signedBy === '/usr/share/keyrings/debian-archive-keyring.gpg'));
  });

  it('points 7.3 at trixie-backports only', () => {
    const sources = parseDeb822Sources(legSourcesFile(kernelLeg('7.3'), BOOKWORM_HOST, 'amd64'));
    assert.deepEqual(
      sources.map((s) => [s.uris[0], s.suites[0], s.components.join(' ')]),
      [['http://deb.debian.org/debian', 'trixie-backports', 'main']],
    );
  });

  it("uses a trixie machine's own mirror", () => {
    const trixieHost = parseDeb822Sources(
      'Types: deb\nURIs: http://mirror.example/debian\nSuites: trixie\nComponents: main\n',
    );
    const sources = parseDeb822Sources(legSourcesFile(kernelLeg('7.3'), trixieHost, 'amd64'));
    assert.deepEqual(sources[0].uris, ['http://mirror.example/debian']);
  });

  it('goes without trixie-security when the machine has no security mirror', () => {
    const sources = parseDeb822Sources(legSourcesFile(kernelLeg('6.12'), BOOKWORM_HOST.slice(0, 1), 'amd64'));
    assert.deepEqual(
      sources.map((s) => s.suites[0]),
      ['trixie'],
    );
  });

  it('refuses to guess a mirror when the machine has no Debian main archive', () => {
    assert.throws(
      () => legSourcesFile(kernelLeg('7.3'), BOOKWORM_HOST.slice(1), 'amd64'),
      /no apt source for bookworm or trixie .*cannot locate a Debian mirror for trixie-backports/,
    );
  });
});

/** Modules as a kernel's packages hold them: name → dependencies, 'builtin', or absent (missing). */
function kernelWith(modules: Record<string, string[] | 'builtin'>): (name: string) => ModuleInfo {
  return (name) => {
    const m = modules[name];
    if (m === undefined) return { kind: 'missing' };
    return m === 'builtin' ? { kind: 'builtin' } : { kind: 'module', depends: m };
  };
}

/** What Debian's 6.12 and 7.3 packages hold of the modules the guest needs (from their .modinfo). */
const SHARED = {
  netfs: [],
  '9pnet': ['netfs'],
  '9pnet_virtio': ['9pnet'],
  '9p': ['9pnet', 'netfs'],
  overlay: [],
  ublk_drv: [],
  loop: [],
  mbcache: [],
  jbd2: [],
  ext4: ['jbd2', 'crc16', 'mbcache'],
  configfs: [],
  null_blk: ['configfs'],
  dm_mod: [],
  dm_flakey: ['dm-mod'],
  dm_delay: ['dm-mod'],
};
const DEBIAN_6_12 = kernelWith({ ...SHARED, crc16: [], crc32c_generic: [] });
const DEBIAN_7_3 = kernelWith({ ...SHARED, crc16: [] });

describe('kernel matrix: module resolution', () => {
  it('loads each module after what it depends on, once', () => {
    assert.deepEqual(loadOrder(['9pnet_virtio', '9p', 'overlay'], DEBIAN_7_3), [
      'netfs',
      '9pnet',
      '9pnet_virtio',
      '9p',
      'overlay',
    ]);
  });

  it('leaves out modules already loaded and modules built into the kernel', () => {
    const builtinCrc16 = kernelWith({ ...SHARED, crc16: 'builtin' });
    assert.deepEqual(loadOrder(['ext4'], builtinCrc16, new Set(['mbcache'])), ['jbd2', 'ext4']);
  });

  it('treats dashes and underscores in names alike, as the kernel does', () => {
    const dm = kernelWith({ dm_mod: [], dm_flakey: ['dm-mod'] });
    assert.deepEqual(loadOrder(['dm-flakey'], dm), ['dm_mod', 'dm_flakey']);
  });

  it('names a missing module and what needs it', () => {
    const noCrc16 = kernelWith({ ...SHARED });
    assert.throws(() => loadOrder(['ext4'], noCrc16), /module crc16 is neither .* nor built in \(needed by ext4\)/);
  });

  it('reports a dependency cycle instead of recursing', () => {
    assert.throws(() => loadOrder(['a'], kernelWith({ a: ['b'], b: ['a'] })), /module dependency cycle: a -> b -> a/);
  });

  it('6.12 loads crc32c_generic (ext4 reaches it through the crypto API), then ublk, loop, ext4 and device-mapper (flakey, delay)', () => {
    const r = resolveModules(legModules(kernelLeg('6.12')), DEBIAN_6_12);
    assert.deepEqual(r.bootOrder, ['netfs', '9pnet', '9pnet_virtio', '9p', 'overlay']);
    assert.deepEqual(r.guestOrder, [
      'crc32c_generic',
      'ublk_drv',
      'loop',
      'jbd2',
      'crc16',
      'mbcache',
      'ext4',
      'dm_mod',
      'dm_flakey',
      'dm_delay',
    ]);
    assert.deepEqual(r.ship.slice(-2), ['configfs', 'null_blk']);
  });

  it('7.3 has no crc32c_generic and needs none; crc16 comes from its new place as a dependency', () => {
    const leg = kernelLeg('7.3');
    assert.ok(!Object.values(legModules(leg)).flat().includes('crc32c_generic'));
    const r = resolveModules(legModules(leg), DEBIAN_7_3);
    assert.deepEqual(r.guestOrder, [
      'ublk_drv',
      'loop',
      'jbd2',
      'crc16',
      'mbcache',
      'ext4',
      'dm_mod',
      'dm_flakey',
      'dm_delay',
    ]);
    assert.equal(r.availability.ext4, 'module');
  });

  it('6.12 without crc32c_generic fails, naming it', () => {
    assert.throws(() => resolveModules(legModules(kernelLeg('6.12')), DEBIAN_7_3), /module crc32c_generic is neither/);
  });

  it('records built-in modules as such and does not ship them', () => {
    const builtinOverlay = kernelWith({ ...SHARED, crc16: [], overlay: 'builtin' });
    const r = resolveModules(legModules(kernelLeg('7.3')), builtinOverlay);
    assert.equal(r.availability.overlay, 'builtin');
    assert.ok(!r.ship.includes('overlay'));
    assert.ok(!r.bootOrder.includes('overlay'));
  });

  it('the init script loads the given modules in the given order and skips one with no file', () => {
    const script = initScript(['netfs', '9p'], ['jbd2', 'ext4']);
    assert.match(script, /^load netfs 9p$/m);
    assert.match(script, /^load jbd2 ext4$/m);
    assert.match(script, /\[ -e "\/lib\/modules\/\$m\.ko" \] \|\| continue/);
  });
});

/** A minimal ELF64 little-endian file with a .shstrtab and a .modinfo section holding `entries`. */
function moduleFile(entries: string[]): Buffer {
  const names = Buffer.from('\0.shstrtab\0.modinfo\0', 'latin1');
  const modinfo = Buffer.from(entries.map((e) => `${e}\0`).join(''), 'latin1');
  const namesAt = 64;
  const modinfoAt = namesAt + names.length;
  const headersAt = Math.ceil((modinfoAt + modinfo.length) / 8) * 8;
  const file = Buffer.alloc(headersAt + 3 * 64);
  file.writeUInt32BE(0x7f454c46, 0);
  file[4] = 2; // 64-bit
  file[5] = 1; // little-endian
  file.writeBigUInt64LE(BigInt(headersAt), 0x28);
  file.writeUInt16LE(64, 0x3a);
  file.writeUInt16LE(3, 0x3c);
  file.writeUInt16LE(1, 0x3e);
  names.copy(file, namesAt);
  modinfo.copy(file, modinfoAt);
  const section = (i: number, nameAt: number, offset: number, size: number) => {
    const at = headersAt + i * 64;
    file.writeUInt32LE(nameAt, at);
    file.writeBigUInt64LE(BigInt(offset), at + 0x18);
    file.writeBigUInt64LE(BigInt(size), at + 0x20);
  };
  section(1, 1, namesAt, names.length);
  section(2, 11, modinfoAt, modinfo.length);
  return file;
}

describe('kernel matrix: .modinfo', () => {
  it('reads depends= from the .modinfo section', () => {
    const ko = moduleFile(['license=GPL', 'softdep=pre: crypto-crc32c', 'depends=jbd2,crc16,mbcache', 'name=ext4']);
    assert.deepEqual(moduleDependencies(ko), ['jbd2', 'crc16', 'mbcache']);
    assert.deepEqual(modinfoValues(ko, 'name'), ['ext4']);
  });

  it('reads an empty depends= as no dependencies, with dashes as underscores', () => {
    assert.deepEqual(moduleDependencies(moduleFile(['depends=', 'name=ublk_drv'])), []);
    assert.deepEqual(moduleDependencies(moduleFile(['depends=dm-mod'])), ['dm_mod']);
  });

  it('does not take a look-alike key for depends', () => {
    assert.deepEqual(moduleDependencies(moduleFile(['xdepends=a', 'depends=b'])), ['b']);
  });

  it('rejects a file that is not a 64-bit little-endian ELF module', () => {
    assert.throws(
      () => moduleDependencies(Buffer.from('not an elf file, just text padded out to 64 bytes.............')),
      /not a 64-bit little-endian ELF/,
    );
    const noModinfo = moduleFile([]);
    noModinfo.write('.xxxxxxx', 64 + 11, 'latin1');
    assert.throws(() => moduleDependencies(noModinfo), /no \.modinfo section/);
  });
});

describe('kernel matrix: cache', () => {
  let cacheDir: string;
  let savedCacheDir: string | undefined;

  /** Writes a cached kernel as fetchKernel leaves it: vmlinuz, modules/, manifest.json. */
  function cacheKernel(leg: string, version: string, manifest: Partial<KernelManifest> = {}): string {
    const dir = path.join(cacheDir, 'kernels', leg, version);
    fs.mkdirSync(path.join(dir, 'modules'), { recursive: true });
    fs.writeFileSync(path.join(dir, 'vmlinuz'), 'bzImage');
    const wanted = Object.values(legModules(kernelLeg(leg))).flat();
    const full: KernelManifest = {
      leg,
      version,
      packages: [],
      modules: Object.fromEntries(wanted.map((m) => [m, 'module'])),
      bootModules: ['9p'],
      guestModules: ['ublk_drv'],
      shipped: ['9p', 'ublk_drv'],
      ...manifest,
    };
    for (const m of full.shipped) fs.writeFileSync(path.join(dir, 'modules', `${m}.ko`), '');
    fs.writeFileSync(path.join(dir, 'manifest.json'), JSON.stringify(full));
    return dir;
  }

  beforeEach(() => {
    savedCacheDir = process.env.UBLK_TS_CACHE_DIR;
    cacheDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ublk-ts-kernel-cache-'));
    process.env.UBLK_TS_CACHE_DIR = cacheDir;
  });

  afterEach(() => {
    if (savedCacheDir === undefined) delete process.env.UBLK_TS_CACHE_DIR;
    else process.env.UBLK_TS_CACHE_DIR = savedCacheDir;
    fs.rmSync(cacheDir, { recursive: true, force: true });
  });

  it('each leg takes the newest complete kernel from its own folder', async () => {
    cacheKernel('6.12', '6.12.95+deb13-amd64');
    const newest = cacheKernel('6.12', '6.12.117+deb13-amd64');
    cacheKernel('7.3', '7.3.4+deb13-amd64');
    const k612 = await ensureKernel('6.12');
    assert.equal(k612.version, '6.12.117+deb13-amd64');
    assert.equal(k612.vmlinuz, path.join(newest, 'vmlinuz'));
    assert.deepEqual([k612.bootModules, k612.guestModules], [['9p'], ['ublk_drv']]);
    const k73 = await ensureKernel('7.3');
    assert.equal(k73.leg, '7.3');
    assert.equal(k73.version, '7.3.4+deb13-amd64');
  });

  it('passes over a cached kernel unpacked for a shorter module list, or with a module file gone', async () => {
    cacheKernel('7.3', '7.3.4+deb13-amd64');
    const shorter = cacheKernel('7.3', '7.3.9+deb13-amd64');
    const manifest = JSON.parse(fs.readFileSync(path.join(shorter, 'manifest.json'), 'utf8')) as KernelManifest;
    delete manifest.modules.ext4;
    fs.writeFileSync(path.join(shorter, 'manifest.json'), JSON.stringify(manifest));
    const gone = cacheKernel('7.3', '7.3.8+deb13-amd64');
    fs.rmSync(path.join(gone, 'modules', 'ublk_drv.ko'));
    assert.equal((await ensureKernel('7.3')).version, '7.3.4+deb13-amd64');
  });

  it('rejects an unknown leg before touching the cache or the network', async () => {
    await assert.rejects(ensureKernel('5.10'), /unknown kernel "5\.10"/);
  });
});
