import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { addDeviceFlags, checkGrantedFlags, loopFileOnTmpfs, wantsZeroCopy } from '../../src/device/add-flags';
import { UblkError } from '../../src/errors';
import { DeviceInfo } from '../../src/kernel/control';
import { featureSupport } from '../../src/kernel/feature-report';
import { dataPathOf, UBLK_F_AUTO_BUF_REG, UBLK_F_BATCH_IO, UBLK_F_USER_RECOVERY } from '../../src/kernel/uapi';
import { loadManifestDir } from '../../src/manifest';
import { normalizeDeviceSpec } from '../../src/spec/device-spec';

const limits = { maxQueues: 1 };
const dirs: string[] = [];

function manifestDir(files: Record<string, string>): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ublk-ts-zero-copy-'));
  dirs.push(dir);
  fs.chmodSync(dir, 0o755);
  for (const [name, spec] of Object.entries(files)) {
    const text = `apiVersion: ublk-ts/v1\nkind: UblkDevice\nmetadata:\n  name: ${name}\nspec:\n${spec.replace(/^/gm, '  ')}\n`;
    fs.writeFileSync(path.join(dir, `${name}.yaml`), text);
    fs.chmodSync(path.join(dir, `${name}.yaml`), 0o644);
  }
  return dir;
}

function info(flags: bigint): DeviceInfo {
  return {
    id: 3,
    state: 'LIVE',
    queues: 1,
    depth: 4,
    maxIoSize: 4096,
    serverPid: 4242,
    flags,
    flagNames: [],
    ownerUid: 0,
    ownerGid: 0,
    charPath: '/dev/ublkc3',
    blockPath: '/dev/ublkb3',
  };
}

after(() => {
  for (const dir of dirs) fs.rmSync(dir, { recursive: true, force: true });
});

describe('zero copy: spec.zeroCopy', () => {
  it('counts in the identity when set; a manifest written before the field (true meant the default) still matches', () => {
    const dir = manifestDir({
      a: 'target: {type: memory}\nsize: 1MiB',
      b: 'target: {type: memory}\nsize: 1MiB\nzeroCopy: true',
      c: 'target: {type: memory}\nsize: 1MiB\nzeroCopy: false',
      d: 'target: {type: memory}\nsize: 1MiB\nzeroCopy: "off"',
    });
    const { manifests, errors } = loadManifestDir(dir);
    const [a, b, c] = manifests;
    // true and absent make different devices now (memory copies unless told), but a record
    // written by the version where true was the default still matches through legacyHash.
    assert.notEqual(b!.hash, a!.hash);
    assert.equal(b!.legacyHash, a!.legacyHash);
    assert.notEqual(c!.hash, a!.hash);
    // An ADD_DEV flag: a device with another data path is a new device, not a new server (no handover).
    assert.notEqual(c!.deviceHash, a!.deviceHash);
    assert.notEqual(b!.deviceHash, a!.deviceHash);
    assert.equal(errors.length, 1);
    assert.equal(errors[0]!.path, 'spec.zeroCopy');
  });

  it('keeps true and false in the validated spec and leaves it out when absent', () => {
    assert.equal(normalizeDeviceSpec({ target: 'memory', size: '1MiB', zeroCopy: false }, limits).zeroCopy, false);
    assert.equal(normalizeDeviceSpec({ target: 'memory', size: '1MiB', zeroCopy: true }, limits).zeroCopy, true);
    const plain = normalizeDeviceSpec({ target: 'memory', size: '1MiB' }, limits);
    assert.equal('zeroCopy' in plain, false);
  });

  it('refuses a value that is not a boolean, naming the field', () => {
    assert.throws(
      () => normalizeDeviceSpec({ target: 'memory', size: '1MiB', zeroCopy: 'yes' as unknown as boolean }, limits),
      /zeroCopy/,
    );
  });
});

describe('zero copy: ADD_DEV flags', () => {
  const memory = normalizeDeviceSpec({ target: 'memory', size: '1MiB' }, limits);
  const nullTarget = normalizeDeviceSpec({ target: 'null', size: '1MiB' }, limits);
  const copyOnly = normalizeDeviceSpec({ target: 'memory', size: '1MiB', zeroCopy: false }, limits);
  const memoryZeroCopy = normalizeDeviceSpec({ target: 'memory', size: '1MiB', zeroCopy: true }, limits);

  it('asks for AUTO_BUF_REG for loop by default, and for memory when the spec says true', () => {
    const loop = { ...memory, target: { type: 'loop' as const, file: '/x', create: false, directIo: 'auto' as const } };
    assert.equal(addDeviceFlags(loop, 'none', UBLK_F_AUTO_BUF_REG), UBLK_F_AUTO_BUF_REG);
    assert.equal(
      addDeviceFlags(loop, 'reissue', UBLK_F_AUTO_BUF_REG) & UBLK_F_AUTO_BUF_REG,
      UBLK_F_AUTO_BUF_REG,
      'with recovery too',
    );
    // Memory's tmpfs reads go through an io-wq worker on the ring: the copy path is faster unless asked.
    assert.equal(addDeviceFlags(memory, 'none', UBLK_F_AUTO_BUF_REG), 0n);
    assert.equal(addDeviceFlags(memoryZeroCopy, 'none', UBLK_F_AUTO_BUF_REG), UBLK_F_AUTO_BUF_REG);
    assert.equal(wantsZeroCopy({ ...loop, zeroCopy: false }, UBLK_F_AUTO_BUF_REG), false);
  });

  it('keeps a loop file on tmpfs on the copy path unless the spec says true: there zero copy goes through io-wq', () => {
    const loop = { ...memory, target: { type: 'loop' as const, file: '/x', create: false, directIo: 'auto' as const } };
    assert.equal(addDeviceFlags(loop, 'none', UBLK_F_AUTO_BUF_REG, { onTmpfs: true }), 0n);
    assert.equal(wantsZeroCopy({ ...loop, zeroCopy: true }, UBLK_F_AUTO_BUF_REG, { onTmpfs: true }), true);
  });

  it('tells a regular file on tmpfs from one elsewhere and from a device node (devtmpfs)', function () {
    const TMPFS_MAGIC = 0x01021994;
    if (fs.statfsSync('/dev/shm').type !== TMPFS_MAGIC) this.skip(); // a host without a tmpfs /dev/shm
    const file = path.join('/dev/shm', `ublk-ts-zc-${process.pid}`);
    fs.writeFileSync(file, '');
    try {
      assert.equal(loopFileOnTmpfs(file), true);
      assert.equal(loopFileOnTmpfs(`${file}.not-yet`), true, 'a file to be created: its directory decides');
    } finally {
      fs.rmSync(file);
    }
    assert.equal(loopFileOnTmpfs('/dev/null'), false, 'a device node is no file on tmpfs');
    const elsewhere = fs.mkdtempSync(path.join(os.tmpdir(), 'ublk-ts-zc-'));
    dirs.push(elsewhere);
    assert.equal(loopFileOnTmpfs(path.join(elsewhere, 'f')), fs.statfsSync(elsewhere).type === TMPFS_MAGIC);
  });

  it('falls back to the copy path, without an error, on a kernel without it (6.12)', () => {
    assert.equal(addDeviceFlags(memoryZeroCopy, 'none', 0n), 0n);
    assert.equal(addDeviceFlags(memoryZeroCopy, 'reissue', UBLK_F_USER_RECOVERY) & UBLK_F_AUTO_BUF_REG, 0n);
  });

  it('keeps the copy path for zeroCopy: false, and for null and js targets', () => {
    assert.equal(addDeviceFlags(copyOnly, 'none', UBLK_F_AUTO_BUF_REG), 0n);
    assert.equal(addDeviceFlags(nullTarget, 'none', UBLK_F_AUTO_BUF_REG), 0n);
    const js = { ...memoryZeroCopy, target: { type: 'js' as const, module: '/m.js', options: {} } };
    assert.equal(wantsZeroCopy(js, UBLK_F_AUTO_BUF_REG), false);
    assert.equal(wantsZeroCopy({ ...js, target: { type: 'null' } }, UBLK_F_AUTO_BUF_REG), false);
  });

  it('keeps the copy path for a batchIo device: the batch runner hands the kernel buffer addresses', () => {
    const batched = { ...memoryZeroCopy, batchIo: true as const };
    assert.equal(wantsZeroCopy(memoryZeroCopy, UBLK_F_AUTO_BUF_REG | UBLK_F_BATCH_IO), true);
    assert.equal(wantsZeroCopy(batched, UBLK_F_AUTO_BUF_REG | UBLK_F_BATCH_IO), false);
    assert.equal(addDeviceFlags(batched, 'none', UBLK_F_AUTO_BUF_REG | UBLK_F_BATCH_IO), UBLK_F_BATCH_IO);
  });

  it('refuses a device the kernel made without AUTO_BUF_REG when it was asked for', () => {
    assert.throws(
      () => checkGrantedFlags(UBLK_F_AUTO_BUF_REG, info(0n)),
      (err: unknown) => err instanceof UblkError && /without UBLK_F_AUTO_BUF_REG/.test(err.message),
    );
  });
});

describe('zero copy: data path and feature report', () => {
  it('takes the data path from the device flags', () => {
    assert.equal(dataPathOf(UBLK_F_AUTO_BUF_REG | UBLK_F_USER_RECOVERY), 'zero-copy');
    assert.equal(dataPathOf(UBLK_F_USER_RECOVERY), 'copy');
  });

  it('says ublk-ts uses AUTO_BUF_REG where the kernel has it', () => {
    const on73 = featureSupport(0x1fffffn, '7.3.4+deb13-amd64').find((f) => f.name === 'zero copy')!;
    assert.equal(on73.present, true);
    assert.match(on73.behaviour, /READ_FIXED\/WRITE_FIXED/);
    const on612 = featureSupport(0x7ffn & ~UBLK_F_AUTO_BUF_REG, '6.12.117+deb13-amd64').find(
      (f) => f.name === 'zero copy',
    )!;
    assert.equal(on612.present, false);
    assert.match(on612.behaviour, /copies/);
  });
});
