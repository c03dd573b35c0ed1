/**
 * The kernel features ublk-ts makes use of since Linux 6.12, each with
 * whether this kernel has it and what ublk-ts does either way: what
 * `ublkctl features` prints and the README's feature table says.
 */
import * as os from 'node:os';
import {
  UBLK_F_AUTO_BUF_REG,
  UBLK_F_BATCH_IO,
  UBLK_F_NO_AUTO_PART_SCAN,
  UBLK_F_PER_IO_DAEMON,
  UBLK_F_QUIESCE,
  UBLK_F_SAFE_STOP_DEV,
  UBLK_F_UPDATE_SIZE,
  UBLK_F_USER_RECOVERY_FAIL_IO,
} from './uapi';

/** One feature: how it is detected, and ublk-ts's behaviour with and without it. */
export interface FeatureSupport {
  name: string;
  /** The UAPI names that carry it. */
  uapi: string;
  /** The first Linux version with it, e.g. '7.0'. */
  since: string;
  /** Whether this kernel has it. */
  present: boolean;
  /** 'GET_FEATURES' (a flag the kernel reports), or 'kernel version' where no flag exists. */
  detectedBy: 'GET_FEATURES' | 'kernel version';
  /** What ublk-ts does on this kernel. */
  behaviour: string;
}

interface FeatureDefinition {
  name: string;
  uapi: string;
  since: string;
  flag?: bigint;
  present: string;
  absent: string;
}

const DEFINITIONS: FeatureDefinition[] = [
  {
    name: 'fail-io recovery',
    uapi: 'UBLK_F_USER_RECOVERY_FAIL_IO',
    since: '6.13',
    flag: UBLK_F_USER_RECOVERY_FAIL_IO,
    present: 'recovery: fail-io fails all IO while no server runs, until one recovers the device',
    absent: 'recovery: fail-io is refused with the feature it needs; reissue, fail-inflight and none work',
  },
  {
    name: 'online resize',
    uapi: 'UBLK_F_UPDATE_SIZE, UPDATE_SIZE',
    since: '6.16',
    flag: UBLK_F_UPDATE_SIZE,
    present: '`ublkctl resize` and a manifest whose size grows resize the live device in place',
    absent: 'a size change is reported as drift: the device keeps its size until it is re-created',
  },
  {
    name: 'graceful handover',
    uapi: 'UBLK_F_QUIESCE, QUIESCE_DEV',
    since: '6.16',
    flag: UBLK_F_QUIESCE,
    present: '`ublkctl restart` and the reconciler hand a device to a new server without failing IO',
    absent:
      '`ublkctl restart` works for devices with user recovery (the old server closes its queues, the new one recovers); others cannot be handed over',
  },
  {
    name: 'threads per queue',
    uapi: 'UBLK_F_PER_IO_DAEMON',
    since: '6.16',
    flag: UBLK_F_PER_IO_DAEMON,
    present:
      'spec.threadsPerQueue: N (ublkctl add --threads-per-queue N) serves each queue of a native target from N threads, each owning every Nth tag',
    absent: 'spec.threadsPerQueue above 1 is refused; each queue is served by one thread',
  },
  {
    name: 'batched IO commands',
    uapi: 'UBLK_F_BATCH_IO, PREP/FETCH/COMMIT_IO_CMDS',
    since: '7.0',
    flag: UBLK_F_BATCH_IO,
    present:
      'spec.batchIo: true (ublkctl add --batch-io) serves each queue of a native target with one multishot fetch of tag arrays and a commit per pass',
    absent: 'spec.batchIo: true is refused; every request takes its own fetch and commit command',
  },
  {
    name: 'safe stop',
    uapi: 'UBLK_F_SAFE_STOP_DEV, TRY_STOP_DEV',
    since: '7.0',
    flag: UBLK_F_SAFE_STOP_DEV,
    present: '`ublkctl del` and the reconciler leave an open or mounted device alone: the kernel refuses, race-free',
    absent:
      '`ublkctl del` and the reconciler leave an open or mounted device alone by their own check, which a process opening it right after cannot be kept from',
  },
  {
    name: 'async delete',
    uapi: 'DEL_DEV_ASYNC',
    since: '6.9',
    present: 'a delete waits for a stuck server on timers: no thread is held, other commands go on',
    absent: "a delete holds one of the process's 4 libuv threads until the server closes /dev/ublkcN",
  },
  {
    name: 'no partition scan',
    uapi: 'UBLK_F_NO_AUTO_PART_SCAN',
    since: '7.0',
    flag: UBLK_F_NO_AUTO_PART_SCAN,
    present: 'spec.partitionScan: false (ublkctl add --no-partition-scan) leaves the partition table unread',
    absent: 'spec.partitionScan: false is refused; the kernel scans every device it starts',
  },
  {
    name: 'zero copy',
    uapi: 'UBLK_F_AUTO_BUF_REG, UBLK_IO_F_NEED_REG_BUF',
    since: '6.16',
    flag: UBLK_F_AUTO_BUF_REG,
    present:
      'loop devices, and memory devices with spec.zeroCopy: true (ublkctl add --zero-copy), serve reads and writes zero copy: the kernel registers each request as a buffer of the queue ring, read or written with READ_FIXED/WRITE_FIXED (spec.zeroCopy: false or ublkctl add --no-zero-copy keeps the copy path)',
    absent: "every device copies each request through its server's buffer",
  },
  {
    name: 'START_DEV pid check',
    uapi: 'START_DEV data[0]',
    since: '6.17',
    present:
      'the serving process sends START_DEV and END_USER_RECOVERY with its own pid as its pid namespace sees it, which the kernel checks and translates: servers in containers work',
    absent:
      'the serving process sends its own pid as its pid namespace sees it; 6.15 and 6.16 compare it untranslated, so there a server in a child pid namespace fails START_DEV with EINVAL',
  },
];

/** [major, minor] of a kernel release string such as '7.3.4+deb13-amd64'; undefined if it does not start so. */
export function kernelVersion(release: string): [number, number] | undefined {
  const m = /^(\d+)\.(\d+)/.exec(release);
  return m ? [Number(m[1]), Number(m[2])] : undefined;
}

function atLeast(version: [number, number] | undefined, since: string): boolean {
  if (!version) return false;
  const [major, minor] = since.split('.').map(Number) as [number, number];
  return version[0] > major || (version[0] === major && version[1] >= minor);
}

/**
 * Each feature with whether this kernel has it: from its GET_FEATURES
 * flags where the feature has one, from `release` (uname -r) where it
 * does not — DEL_DEV_ASYNC and the pid check came without a flag; the
 * delete itself still falls back on the kernel's answer, not the version.
 */
export function featureSupport(features: bigint, release: string = os.release()): FeatureSupport[] {
  const version = kernelVersion(release);
  return DEFINITIONS.map((d) => {
    const present = d.flag !== undefined ? (features & d.flag) !== 0n : atLeast(version, d.since);
    return {
      name: d.name,
      uapi: d.uapi,
      since: d.since,
      present,
      detectedBy: d.flag !== undefined ? 'GET_FEATURES' : 'kernel version',
      behaviour: present ? d.present : d.absent,
    };
  });
}
