// npm run bench: every server benchmark, one JSON document. Pass names to run a subset:
//   npm run bench -- api-list fanout coldstart sandbox snapshot
import { benchApiList } from './api-list.js';
import { benchFanout } from './fanout.js';
import { benchColdStart } from './coldstart.js';
import { benchSandbox } from './sandbox.js';
import { benchSnapshot } from './snapshot.js';
import { printJson } from './util.js';

const all = { 'api-list': () => benchApiList(), fanout: () => benchFanout(), coldstart: () => benchColdStart(), sandbox: () => benchSandbox(), snapshot: () => benchSnapshot() } as const;
const wanted = process.argv.slice(2).filter((a) => a in all) as Array<keyof typeof all>;
const results: Record<string, unknown> = { date: new Date().toISOString(), node: process.version, cpus: (await import('node:os')).cpus().length };
for (const name of wanted.length ? wanted : (Object.keys(all) as Array<keyof typeof all>)) results[name] = await all[name]();
printJson(results);
