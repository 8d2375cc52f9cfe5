// Recognizes the console's escape sequences in what the user types, so they leave the
// console instead of reaching the guest:
//   Ctrl-]            anywhere (as telnet);
//   ~.                at the start of a line (as ssh): after Enter, or as the first keys typed;
//   ~~                at the start of a line sends one ~ (to type "~." into the guest).
// A ~ at the start of a line is held back until the next key shows whether it starts a sequence.

export const CTRL_RIGHT_BRACKET = 0x1d;
const TILDE = 0x7e;
const DOT = 0x2e;
const CR = 0x0d;
const LF = 0x0a;

export interface EscapeResult {
  /** Bytes for the guest. */
  forward: Buffer;
  /** An escape sequence was typed: leave (whatever followed it is dropped). */
  exit: boolean;
}

export class EscapeDetector {
  private atLineStart = true;
  private tildeHeld = false;

  feed(chunk: Buffer): EscapeResult {
    const out: number[] = [];
    for (const byte of chunk) {
      if (byte === CTRL_RIGHT_BRACKET) return { forward: Buffer.from(out), exit: true };
      if (this.tildeHeld) {
        this.tildeHeld = false;
        if (byte === DOT) return { forward: Buffer.from(out), exit: true };
        out.push(TILDE);
        // "~~" stands for one "~"; anything else is the held "~" followed by that key.
        if (byte === TILDE) {
          this.atLineStart = false;
          continue;
        }
      } else if (byte === TILDE && this.atLineStart) {
        this.tildeHeld = true;
        continue;
      }
      out.push(byte);
      this.atLineStart = byte === CR || byte === LF;
    }
    return { forward: Buffer.from(out), exit: false };
  }
}
