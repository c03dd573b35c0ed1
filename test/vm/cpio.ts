/** One member of an initramfs archive; paths are relative to the archive root (no leading slash). */
export type CpioEntry =
  | { kind: 'dir'; path: string; mode?: number }
  | { kind: 'file'; path: string; data: Buffer; mode?: number }
  | { kind: 'symlink'; path: string; target: string }
  | { kind: 'chardev'; path: string; major: number; minor: number; mode?: number };

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;

/**
 * Serialises entries as a `newc` cpio archive, the format the kernel unpacks into its initial
 * rootfs. Written in TypeScript so building an initramfs needs neither the cpio tool nor
 * root privileges (device nodes such as /dev/console are just headers here).
 */
export function newcArchive(entries: CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  entries.forEach((entry, i) => parts.push(...member(entry, i + 1)));
  parts.push(...header({ ino: 0, mode: 0, nlink: 1, size: 0, rdevMajor: 0, rdevMinor: 0 }, 'TRAILER!!!'));
  return Buffer.concat(parts);
}

function member(entry: CpioEntry, ino: number): Buffer[] {
  const base = { ino, rdevMajor: 0, rdevMinor: 0 };
  switch (entry.kind) {
    case 'dir':
      return header({ ...base, mode: S_IFDIR | (entry.mode ?? 0o755), nlink: 2, size: 0 }, entry.path);
    case 'file':
      return [
        ...header({ ...base, mode: S_IFREG | (entry.mode ?? 0o644), nlink: 1, size: entry.data.length }, entry.path),
        ...padded(entry.data),
      ];
    case 'symlink': {
      const target = Buffer.from(entry.target);
      return [
        ...header({ ...base, mode: S_IFLNK | 0o777, nlink: 1, size: target.length }, entry.path),
        ...padded(target),
      ];
    }
    case 'chardev':
      return header(
        {
          ...base,
          mode: S_IFCHR | (entry.mode ?? 0o600),
          nlink: 1,
          size: 0,
          rdevMajor: entry.major,
          rdevMinor: entry.minor,
        },
        entry.path,
      );
  }
}

interface Header {
  ino: number;
  mode: number;
  nlink: number;
  size: number;
  rdevMajor: number;
  rdevMinor: number;
}

function header(h: Header, path: string): Buffer[] {
  const name = Buffer.from(`${path}\0`);
  const fields = [h.ino, h.mode, 0, 0, h.nlink, 0, h.size, 0, 0, h.rdevMajor, h.rdevMinor, name.length, 0];
  const text = `070701${fields.map((f) => f.toString(16).padStart(8, '0')).join('')}`;
  return padded(Buffer.concat([Buffer.from(text, 'ascii'), name]));
}

/** newc aligns every header+name and every data block to 4 bytes. */
function padded(data: Buffer): Buffer[] {
  const pad = (4 - (data.length % 4)) % 4;
  return pad === 0 ? [data] : [data, Buffer.alloc(pad)];
}
