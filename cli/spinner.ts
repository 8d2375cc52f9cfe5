// A spinner on stderr for requests that take a while (start, stop, volume copies). Only on a
// terminal: in a pipe or a log it would be noise. It appears after a short grace period so
// quick answers do not flicker, and erases itself before anything else is printed.

const FRAMES = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
const FRAME_MS = 80;
const GRACE_MS = 300;

export async function withSpinner<T>(label: string, work: Promise<T>, stream: NodeJS.WriteStream = process.stderr): Promise<T> {
  if (!stream.isTTY) return work;
  let frame = 0;
  let shown = false;
  const started = Date.now();
  const draw = () => {
    shown = true;
    const seconds = ((Date.now() - started) / 1000).toFixed(0);
    stream.write(`\r\x1b[K${FRAMES[frame++ % FRAMES.length]} ${label} ${seconds}s`);
  };
  let timer: NodeJS.Timeout | undefined;
  // Ctrl-C while spinning: erase the spinner line so the shell's prompt starts clean (130 = 128 + SIGINT).
  const onInterrupt = () => {
    if (shown) stream.write('\r\x1b[K');
    process.exit(130);
  };
  process.once('SIGINT', onInterrupt);
  const grace = setTimeout(() => {
    draw();
    timer = setInterval(draw, FRAME_MS);
  }, GRACE_MS);
  try {
    return await work;
  } finally {
    clearTimeout(grace);
    clearInterval(timer);
    process.off('SIGINT', onInterrupt);
    if (shown) stream.write('\r\x1b[K');
  }
}
