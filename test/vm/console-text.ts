/* eslint-disable no-control-regex -- these patterns match terminal control sequences on purpose */
import { StringDecoder } from 'node:string_decoder';

// CSI and OSC sequences, charset selections, two-byte escapes, then stray control
// characters other than \t and \n.
const NOISE =
  /\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()][0-9A-Za-z]|\x1b[@-Z\\-_a-z=>78]|[\x00-\x08\x0b-\x1f\x7f]/g;
// An escape sequence cut off at the end of a chunk: held back until the next chunk.
const PARTIAL = /\x1b(?:\[[0-?]*[ -/]*|\][^\x07\x1b]*\x1b?|[()])?$/;

/**
 * Turns the raw serial console byte stream into plain text: UTF-8 decoded across chunk
 * boundaries, with the firmware's and the guest tty's terminal control sequences and
 * carriage returns removed, so logs and assertions see only what the guest printed.
 */
export class ConsoleText {
  private readonly decoder = new StringDecoder('utf8');
  private held = '';

  /** Returns the plain text of `chunk`, possibly holding back an unfinished escape sequence. */
  push(chunk: Buffer): string {
    const text = this.held + this.decoder.write(chunk);
    const partial = PARTIAL.exec(text);
    const cut = partial === null || text.length - partial.index > 64 ? text.length : partial.index;
    this.held = text.slice(cut);
    return text.slice(0, cut).replace(NOISE, '');
  }

  /** Returns whatever is still held at the end of the stream. */
  end(): string {
    const rest = this.held + this.decoder.end();
    this.held = '';
    return rest.replace(NOISE, '');
  }
}
