// Merges the robustness drills' figures (issue 10) into bench/results/robustness.json.
//
//   ROBUSTNESS_OUT=/tmp/robustness-out node --test dist/server/api/fuzz.test.js ...   (each drill writes <drill>.json)
//   node dist/bench/robustness.js [--in DIR] [--lab-log FILE] [--out FILE]
//
// The QMP fuzz runs in the nested KVM lab, whose view of the host is read-only: its figures come
// from the "# QMP fuzz figures: {...}" line of the lab's output (--lab-log).
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { join } from 'node:path';
import { REPO_ROOT } from '../server/paths.js';

const DRILLS = ['api-fuzz', 'qmp-fuzz', 'qmp-fuzz-inprocess', 'websocket-abuse', 'kill9', 'disk-full', 'lifecycles', 'sigterm'];

function arg(name: string, fallback: string | undefined): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : fallback;
}

const inDir = arg('--in', process.env.ROBUSTNESS_OUT ?? '/tmp/robustness-out')!;
const labLog = arg('--lab-log', undefined);
const outFile = arg('--out', join(REPO_ROOT, 'bench', 'results', 'robustness.json'))!;

const drills: Record<string, unknown> = {};
if (existsSync(inDir)) {
  for (const f of readdirSync(inDir).filter((x) => x.endsWith('.json')).sort()) {
    const d = JSON.parse(readFileSync(join(inDir, f), 'utf8')) as { drill: string };
    drills[d.drill] = d;
  }
}
if (labLog) {
  const m = /# QMP fuzz figures: (\{.*\})/.exec(readFileSync(labLog, 'utf8'));
  if (m) drills['qmp-fuzz'] = { drill: 'qmp-fuzz', where: 'nested KVM lab (scripts/kvm-tests.sh)', ...JSON.parse(m[1]!) };
}
const missing = DRILLS.filter((d) => !(d in drills));
const result = {
  bench: 'robustness',
  date: new Date().toISOString(),
  host: { cpus: cpus().length, cpu: cpus()[0]?.model, memoryGiB: Math.round(totalmem() / 2 ** 30), node: process.version },
  drills: Object.fromEntries(DRILLS.filter((d) => d in drills).map((d) => [d, drills[d]])),
  missing,
};
writeFileSync(outFile, JSON.stringify(result, null, 2) + '\n');
process.stdout.write(`wrote ${outFile}: ${Object.keys(result.drills).length} drills${missing.length ? `, missing ${missing.join(', ')}` : ''}\n`);
