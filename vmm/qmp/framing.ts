// Splits a byte stream into top-level JSON texts (QMP clients may or may not send newlines).
// Tracks strings and escapes so braces inside strings do not count. A text longer than `maxLen`
// is reported as an error and skipped.

export type Frame = { ok: true; text: string } | { ok: false; error: string };

export class JsonSplitter {
  private buf = '';
  private depth = 0;
  private inString = false;
  private escape = false;
  private start = -1;
  private overflow = false;

  constructor(private readonly maxLen = 64 * 1024) {}

  push(chunk: string): Frame[] {
    const out: Frame[] = [];
    for (const ch of chunk) {
      if (this.overflow) {
        // skip until the oversized object ends (best effort: back at depth 0 outside strings)
        this.track(ch);
        if (this.depth === 0 && !this.inString) this.overflow = false;
        continue;
      }
      if (this.depth === 0 && this.inString) {
        // a string outside any object is junk (reported at its opening quote); braces in it do
        // not open an object that would swallow the commands after it (found by the QMP fuzz drill)
        this.track(ch);
        continue;
      }
      if (this.depth === 0 && !this.inString) {
        if (ch === '{' || ch === '[') {
          this.buf = ch;
          this.depth = 1;
          continue;
        }
        if (/\s/.test(ch)) continue;
        // stray data outside an object: report once per run of junk
        if (this.start !== -2) out.push({ ok: false, error: `JSON parse error, invalid character '${ch}'` });
        this.start = -2;
        if (ch === '"') this.inString = true;
        continue;
      }
      this.start = -1;
      this.buf += ch;
      this.track(ch);
      if (this.depth === 0) {
        out.push({ ok: true, text: this.buf });
        this.buf = '';
      } else if (this.buf.length > this.maxLen) {
        out.push({ ok: false, error: `JSON object longer than ${this.maxLen} bytes` });
        this.buf = '';
        this.overflow = true;
      }
    }
    if (this.depth === 0 && !this.inString && this.start === -2 && chunk.endsWith('\n')) this.start = -1;
    return out;
  }

  private track(ch: string): void {
    if (this.inString) {
      if (this.escape) this.escape = false;
      else if (ch === '\\') this.escape = true;
      else if (ch === '"') this.inString = false;
      return;
    }
    if (ch === '"') this.inString = true;
    else if (ch === '{' || ch === '[') this.depth++;
    else if (ch === '}' || ch === ']') this.depth = Math.max(0, this.depth - 1);
  }
}
