/**
 * What `lockMemory: true` locks in a device server besides each queue's IO
 * buffers (locked by the queues themselves): the program code the queues
 * run, so serving IO never waits for a page to be read back from a disk
 * that may be the device itself. Not mlockall: V8 gives heap pages back
 * with madvise(MADV_DONTNEED), which locked memory refuses, and aborts.
 */
import * as fs from 'node:fs';
import { native } from '../kernel/native';

/** An executable mapping of a file, from /proc/self/maps. */
interface CodeMapping {
  start: bigint;
  end: bigint;
  path: string;
}

/** The file-backed executable mappings in /proc/PID/maps text. */
export function codeMappings(maps: string): CodeMapping[] {
  const found: CodeMapping[] = [];
  for (const line of maps.split('\n')) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) ..x. [0-9a-f]+ \S+ \d+\s+(\/.*)$/.exec(line);
    if (m) found.push({ start: BigInt(`0x${m[1]}`), end: BigInt(`0x${m[2]}`), path: m[3]! });
  }
  return found;
}

/** Locks this process's executable code (node, the addon, their libraries); returns the bytes locked. */
export function lockCode(): number {
  let bytes = 0n;
  for (const mapping of codeMappings(fs.readFileSync('/proc/self/maps', 'utf8'))) {
    native().lockRange(mapping.start, mapping.end - mapping.start);
    bytes += mapping.end - mapping.start;
  }
  return Number(bytes);
}
