// An option group: the command-line options and the JSON keys of one concern (memory, drives,
// ...), declared once. The CLI parser (cli.ts), the JSON file schema (json.ts) and the usage text
// are all assembled from the list of groups in config.ts.
import * as z from 'zod';
import type { Keys, KeyTable, Values } from './options.js';
import type { Settings } from './settings.js';

export interface OptionSpec {
  /** '-drive'; several groups share '-device', told apart by `driver` */
  name: string;
  /** for -device: the driver, the first item of the value (`-device vsock,id=...`) */
  driver?: string;
  /** usage text of the value ('' for a flag) */
  syntax: string;
  help: string;
  /** 'optional': the next argument is the value unless it starts with '-' (-D [FILE]) */
  takes: 'value' | 'none' | 'optional';
}

/** Top-level JSON keys → their schemas. Objects under the same key in several groups are merged. */
export type JsonShape = Record<string, z.ZodType>;
export type JsonPart<S extends JsonShape> = { [P in keyof S]?: z.output<S[P]> };

export interface Group<S extends JsonShape = JsonShape> {
  readonly options: readonly OptionSpec[];
  readonly json: S;
  /** one occurrence of `option`; `value` is undefined for flags (and -D without a file) */
  fromCli(option: OptionSpec, value: string | undefined, into: Settings): void;
  /** this group's keys of the validated JSON file; `at('drive.0')` names a place in errors */
  fromJson(json: JsonPart<S>, into: Settings, at: (path: string) => string): void;
}

export function defineGroup<S extends JsonShape>(group: Group<S>): Group<S> {
  return group;
}

/** The label of an option in errors: '-drive', or '-device vsock'. */
export function optionLabel(o: OptionSpec): string {
  return o.driver === undefined ? o.name : `${o.name} ${o.driver}`;
}

/**
 * A group whose table's property names are Settings fields, applied as they are: either one kv
 * option (`-machine type=..,mem-share=..`, `kv`) or one whole option per key (`-kernel FILE`,
 * `options`: help per key). JSON: the keys inside `section`, or at the top level.
 */
export function settingsGroup<K extends Keys>(o: {
  table: KeyTable<K> & (Values<K> extends Partial<Settings> ? unknown : never);
  kv?: { option: string; help: string };
  options?: { [P in keyof K]?: string };
  section?: string;
}): Group {
  const { table } = o;
  const apply = (v: Values<K>, s: Settings): void => void Object.assign(s, v);
  const options: OptionSpec[] = o.kv
    ? [{ name: o.kv.option, syntax: table.syntax(), help: o.kv.help, takes: 'value' }]
    : Object.entries(o.options ?? {}).map(([prop, help]) => {
      const k = table.keys[prop]!;
      return { name: k.cli, syntax: k.flag ? '' : k.metavar, help: help as string, takes: k.flag ? 'none' : 'value' };
    });
  const json: JsonShape = o.section === undefined ? table.jsonShape() : { [o.section]: table.jsonObject() };
  return {
    options,
    json,
    fromCli(option, value, s) {
      if (o.kv) return apply(table.parseKv(option.name, value ?? ''), s);
      const prop = Object.keys(table.keys).find((p) => table.keys[p]!.cli === option.name) as keyof K & string;
      apply({ [prop]: table.keys[prop]!.flag ? true : table.parseOption(option.name, prop, value ?? '') } as Values<K>, s);
    },
    fromJson(j, s) {
      const obj = o.section === undefined ? j : j[o.section];
      if (obj !== undefined) apply(table.fromJson(obj as Record<string, unknown>), s);
    },
  };
}
