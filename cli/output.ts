// Printing results: `--output json` prints what the API returned (so scripts get the API's
// shapes, not the CLI's); `--output table` prints aligned columns that fit the terminal.
import { UsageError } from './errors.js';

export type OutputFormat = 'table' | 'json';

export function parseOutputFormat(v: string | undefined): OutputFormat {
  if (v === undefined || v === 'table') return 'table';
  if (v === 'json') return 'json';
  throw new UsageError(`--output must be table or json, not ${JSON.stringify(v)}`);
}

export interface Column<T> {
  header: string;
  value: (row: T) => string | number | boolean | undefined | null;
  /** Right-align (numbers). */
  right?: boolean;
  /** May be left out when the table does not fit even with its widest columns truncated. */
  optional?: boolean;
}

/**
 * The width tables must fit: $COLUMNS when set (so `COLUMNS=80 capsule vm ls | less` works and
 * tests can pin it), else the terminal's width, else none (a pipe gets whole values to grep).
 */
export function terminalWidth(env: NodeJS.ProcessEnv = process.env, stream: NodeJS.WriteStream = process.stdout): number | undefined {
  const fromEnv = Number(env.COLUMNS);
  if (Number.isInteger(fromEnv) && fromEnv > 0) return fromEnv;
  if (stream.isTTY && stream.columns > 0) return stream.columns;
  return undefined;
}

const GAP = '  ';
/** Truncation stops at this many characters (or the header's length, if longer): shorter values stay whole. */
const MIN_COLUMN = 10;
const ELLIPSIS = '…';

/** Display width of a string: code points (the tables hold names, ids and ASCII states). */
const width = (s: string) => [...s].length;

function truncate(s: string, w: number): string {
  if (width(s) <= w) return s;
  if (w <= 1) return [...s].slice(0, w).join('');
  return [...s].slice(0, w - 1).join('') + ELLIPSIS;
}

/**
 * Renders rows as aligned columns that fit `maxWidth`: first the widest columns are truncated
 * (down to max(header, MIN_COLUMN) characters each), then `optional` columns are left out from
 * the right, and only then is everything cut to fit.
 */
export function formatTable<T>(rows: readonly T[], columns: readonly Column<T>[], maxWidth?: number): string {
  let shown = [...columns];
  for (;;) {
    const result = layout(rows, shown, maxWidth, false);
    if (result) return result;
    const drop = shown.map((c) => c.optional).lastIndexOf(true);
    if (drop < 0) return layout(rows, shown, maxWidth, true)!;
    shown = shown.filter((_, i) => i !== drop);
  }
}

function layout<T>(rows: readonly T[], columns: readonly Column<T>[], maxWidth: number | undefined, force: boolean): string | undefined {
  const cells = rows.map((r) => columns.map((c) => cellText(c.value(r))));
  const natural = columns.map((c, i) => Math.max(width(c.header), ...cells.map((row) => width(row[i]!))));
  const widths = [...natural];
  if (maxWidth !== undefined) {
    const minimums = force ? natural.map(() => 1) : natural.map((n, i) => Math.min(n, Math.max(width(columns[i]!.header), MIN_COLUMN)));
    if (!fitWidths(widths, minimums, maxWidth) && !force) return undefined;
  }
  const line = (values: string[]) => values
    .map((v, i) => {
      const text = truncate(v, widths[i]!);
      const pad = ' '.repeat(widths[i]! - width(text));
      // The last column is not padded: no trailing spaces.
      if (i === values.length - 1 && !columns[i]!.right) return text;
      return columns[i]!.right ? pad + text : text + pad;
    })
    .join(GAP);
  return [line(columns.map((c) => c.header)), ...cells.map(line)].join('\n') + '\n';
}

/** Takes one character at a time from the widest column above its minimum; false if that is not enough. */
function fitWidths(widths: number[], minimums: number[], maxWidth: number): boolean {
  const total = () => widths.reduce((a, b) => a + b, 0) + GAP.length * (widths.length - 1);
  while (total() > maxWidth) {
    let widest = -1;
    for (let i = 0; i < widths.length; i++) {
      if (widths[i]! > minimums[i]! && (widest < 0 || widths[i]! > widths[widest]!)) widest = i;
    }
    if (widest < 0) return false;
    widths[widest]!--;
  }
  return true;
}

function cellText(v: string | number | boolean | undefined | null): string {
  if (v === undefined || v === null || v === '') return '-';
  // Control characters in a value (a name cannot have them, but an error message might) would break the layout.
  return String(v).replace(/[\x00-\x1f\x7f]/g, ' ');
}

/** `key: value` lines for one object (`show` commands), keys aligned. */
export function formatFields(fields: ReadonlyArray<[string, string | number | boolean | undefined | null]>): string {
  const w = Math.max(...fields.map(([k]) => k.length)) + 1;
  return fields.map(([k, v]) => `${(k + ':').padEnd(w)} ${cellText(v)}`).join('\n') + '\n';
}

export function formatJson(value: unknown): string {
  return JSON.stringify(value, null, 2) + '\n';
}

/** `2026-12-01T21:42:05.123Z` → `2026-12-01 21:42:05` (UTC, as the server stores it). */
export function shortTime(iso: string | undefined): string {
  if (!iso) return '-';
  return iso.replace('T', ' ').replace(/\.\d+Z$|Z$/, '');
}

export function mib(n: number | undefined): string {
  if (n === undefined || n === null) return '-';
  if (n >= 1024 && n % 1024 === 0) return `${n / 1024} GiB`;
  return `${n} MiB`;
}

/** What a command prints, in the chosen format, to the chosen stream (tests pass their own). */
export class Printer {
  constructor(readonly format: OutputFormat, private readonly out: NodeJS.WritableStream = process.stdout, private readonly maxWidth = terminalWidth()) {}

  get json(): boolean {
    return this.format === 'json';
  }

  /** In json mode the API's value; in table mode the rows as a table. */
  table<T>(apiValue: unknown, rows: readonly T[], columns: readonly Column<T>[]): void {
    this.out.write(this.json ? formatJson(apiValue) : formatTable(rows, columns, this.maxWidth));
  }

  fields(apiValue: unknown, fields: ReadonlyArray<[string, string | number | boolean | undefined | null]>): void {
    this.out.write(this.json ? formatJson(apiValue) : formatFields(fields));
  }

  /** A human message (table mode only: json mode prints data or nothing). */
  message(text: string): void {
    if (!this.json) this.out.write(text.endsWith('\n') ? text : text + '\n');
  }

  raw(text: string): void {
    this.out.write(text);
  }

  jsonValue(value: unknown): void {
    this.out.write(formatJson(value));
  }
}
