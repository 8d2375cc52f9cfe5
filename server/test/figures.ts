// Robustness drills write their numbers here (one JSON file per drill) when ROBUSTNESS_OUT names
// a directory; bench/robustness.ts merges them into bench/results/robustness.json.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export function writeFigures(drill: string, figures: Record<string, unknown>): void {
  const dir = process.env.ROBUSTNESS_OUT;
  if (!dir) return;
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, `${drill}.json`), JSON.stringify({ drill, at: new Date().toISOString(), ...figures }, null, 2) + '\n');
}
