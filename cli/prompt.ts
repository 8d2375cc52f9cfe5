// Asking for the login's URL and token: a line with a default, or a secret without echo.
// Without a terminal on stdin (`capsule login < token-file`), the answer is the next line read.
import { createInterface } from 'node:readline';

let pipedLines: AsyncIterator<string> | undefined;

async function readPipedLine(): Promise<string> {
  pipedLines ??= createInterface({ input: process.stdin, terminal: false })[Symbol.asyncIterator]();
  const next = await pipedLines.next();
  return next.done ? '' : next.value.trim();
}

export async function ask(question: string, defaultValue?: string): Promise<string> {
  if (!process.stdin.isTTY) return (await readPipedLine()) || defaultValue || '';
  const rl = createInterface({ input: process.stdin, output: process.stderr });
  try {
    const answer = await new Promise<string>((r) => rl.question(`${question}${defaultValue ? ` [${defaultValue}]` : ''}: `, r));
    return answer.trim() || defaultValue || '';
  } finally {
    rl.close();
  }
}

/** Reads a line with echo off (the terminal in raw mode, so each key is handled here). */
export async function askSecret(question: string): Promise<string> {
  if (!process.stdin.isTTY) return readPipedLine();
  const stdin = process.stdin;
  process.stderr.write(`${question}: `);
  stdin.setRawMode(true);
  stdin.resume();
  try {
    return await new Promise<string>((resolve, reject) => {
      let value = '';
      const onData = (chunk: Buffer) => {
        for (const ch of chunk.toString('utf8')) {
          if (ch === '\r' || ch === '\n') {
            stdin.off('data', onData);
            return resolve(value.trim());
          }
          if (ch === '\x03') { // Ctrl-C: raw mode turned it into a byte
            stdin.off('data', onData);
            return reject(new Error('interrupted'));
          }
          if (ch === '\x7f' || ch === '\b') value = value.slice(0, -1);
          else if (ch >= ' ') value += ch;
        }
      };
      stdin.on('data', onData);
    });
  } finally {
    stdin.setRawMode(false);
    stdin.pause();
    process.stderr.write('\n');
  }
}
