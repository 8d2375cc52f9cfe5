// The host end of the virtio-net lab test's TCP streams, run inside the test's network namespace
// (`ip netns exec NS node net-peer.js ...`):
//   send HOST PORT FILE   connect (retrying for 60 s while the guest's listener starts), send the
//                         file, close; prints {"sent": N}
//   sink HOST PORT        listen, print "listening", take one connection to its end; prints
//                         {"bytes": N, "md5": "...", "ms": first byte -> end}
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { connect, createServer, type Socket } from 'node:net';

const [mode, host, portText, file] = process.argv.slice(2);
const port = Number(portText);

function send(): void {
  const data = readFileSync(file as string);
  const deadline = Date.now() + 60_000;
  const attempt = (): void => {
    const s: Socket = connect({ host: host as string, port });
    s.once('connect', () => {
      s.end(data, () => undefined);
      s.on('close', () => {
        process.stdout.write(`${JSON.stringify({ sent: data.length })}\n`);
        process.exit(0);
      });
    });
    s.once('error', (e) => {
      s.destroy();
      if (Date.now() > deadline) {
        process.stdout.write(`${JSON.stringify({ error: e.message })}\n`);
        process.exit(1);
      }
      setTimeout(attempt, 300);
    });
  };
  attempt();
}

function sink(): void {
  let bytes = 0;
  let first = 0;
  // killed before the end: say how far it got
  process.on('SIGTERM', () => {
    process.stdout.write(`${JSON.stringify({ partial: true, bytes, ms: first ? Date.now() - first : 0 })}\n`);
    process.exit(1);
  });
  const srv = createServer((s) => {
    const h = createHash('md5');
    s.on('data', (d: Buffer) => {
      if (!first) first = Date.now();
      bytes += d.length;
      h.update(d);
    });
    s.on('end', () => {
      const ms = first ? Date.now() - first : 0;
      process.stdout.write(`${JSON.stringify({ bytes, md5: h.digest('hex'), ms })}\n`);
      s.end();
      srv.close();
      setTimeout(() => process.exit(0), 100);
    });
  });
  srv.listen(port, host, () => process.stdout.write('listening\n'));
}

if (mode === 'send') send();
else if (mode === 'sink') sink();
else {
  process.stderr.write('usage: net-peer send HOST PORT FILE | sink HOST PORT\n');
  process.exit(2);
}
