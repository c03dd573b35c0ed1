import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { addDeviceFlags, checkGrantedFlags, wantsZeroCopy } from '../../src/device/add-flags';
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
  it('counts in the identity only when false: a manifest without it, or with true, hashes as before', () => {
    const dir = manifestDir({
      a: 'target: {type: memory}\nsize: 1MiB',
      b: 'target: {type: memory}\nsize: 1MiB\nzeroCopy: true',
      c: 'target: {type: memory}\nsize: 1MiB\nzeroCopy: false',
      d: 'target: {type: memory}\nsize: 1MiB\nzeroCopy: "off"',
    });
    const { manifests, errors } = loadManifestDir(dir);
    const [a, b, c] = manifests;
    assert.equal(b!.hash, a!.hash);
    assert.equal(b!.deviceHash, a!.deviceHash);
    assert.equal(b!.legacyHash, a!.legacyHash);
    assert.notEqual(c!.hash, a!.hash);
    // An ADD_DEV flag: a device with another data path is a new device, not a new server (no handover).
    assert.notEqual(c!.deviceHash, a!.deviceHash);
    assert.equal(errors.length, 1);
    assert.equal(errors[0]!.path, 'spec.zeroCopy');
  });

  it('keeps false in the validated spec and leaves the default out of it', () => {
    assert.equal(normalizeDeviceSpec({ target: 'memory', size: '1MiB', zeroCopy: false }, limits).zeroCopy, false);
    const plain = normalizeDeviceSpec({ target: 'memory', size: '1MiB', zeroCopy: true }, limits);
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

  it('asks for AUTO_BUF_REG for loop and memory where the kernel has it', () => {
    assert.equal(addDeviceFlags(memory, 'none', UBLK_F_AUTO_BUF_REG), UBLK_F_AUTO_BUF_REG);
    assert.equal(
      addDeviceFlags(memory, 'reissue', UBLK_F_AUTO_BUF_REG) & UBLK_F_AUTO_BUF_REG,
      UBLK_F_AUTO_BUF_REG,
      'with recovery too',
    );
    const loop = { ...memory, target: { type: 'loop' as const, file: '/x', create: false, directIo: 'auto' as const } };
    assert.equal(wantsZeroCopy(loop, UBLK_F_AUTO_BUF_REG), true);
  });

  it('falls back to the copy path, without an error, on a kernel without it (6.12)', () => {
    assert.equal(addDeviceFlags(memory, 'none', 0n), 0n);
    assert.equal(addDeviceFlags(memory, 'reissue', UBLK_F_USER_RECOVERY) & UBLK_F_AUTO_BUF_REG, 0n);
  });

  it('keeps the copy path for zeroCopy: false, and for null and js targets', () => {
    assert.equal(addDeviceFlags(copyOnly, 'none', UBLK_F_AUTO_BUF_REG), 0n);
    assert.equal(addDeviceFlags(nullTarget, 'none', UBLK_F_AUTO_BUF_REG), 0n);
    const js = { ...memory, target: { type: 'js' as const, module: '/m.js', options: {} } };
    assert.equal(wantsZeroCopy(js, UBLK_F_AUTO_BUF_REG), false);
  });

  it('keeps the copy path for a batchIo device: the batch runner hands the kernel buffer addresses', () => {
    const batched = { ...memory, batchIo: true as const };
    assert.equal(wantsZeroCopy(memory, UBLK_F_AUTO_BUF_REG | UBLK_F_BATCH_IO), true);
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
