/**
 * Thrown when the test VM cannot be had on this machine: a missing host tool, no route to
 * Debian's archive for the kernel, an unusable busybox. End-to-end tests report `reason` as
 * the cause of a skip instead of failing, because nothing in the project is at fault.
 */
export class VmUnavailable extends Error {
  override readonly name = 'VmUnavailable';

  constructor(
    readonly reason: string,
    options?: { cause?: unknown },
  ) {
    super(reason, options);
  }
}
