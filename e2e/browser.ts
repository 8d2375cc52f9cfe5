// Shared Playwright setup for the web tests: Debian's chromium, headless, no outside
// connections (Playwright's launch() always uses a fresh temporary --user-data-dir).
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const CHROMIUM = process.env['CAPSULE_CHROMIUM'] ?? '/usr/bin/chromium';
/** The repository root (this file runs from dist/e2e/). */
export const ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const SCREENSHOTS = join(ROOT, 'test-output', 'screenshots');

export async function launch(): Promise<Browser> {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--disable-default-apps',
      '--disable-extensions',
      '--no-default-browser-check',
      '--metrics-recording-only',
    ],
  });
}

export async function newContext(
  browser: Browser,
  opts: { phone?: boolean; dark?: boolean } = {},
): Promise<BrowserContext> {
  return browser.newContext({
    viewport: opts.phone ? { width: 390, height: 844 } : { width: 1280, height: 860 },
    deviceScaleFactor: 1,
    colorScheme: opts.dark ? 'dark' : 'light',
    isMobile: !!opts.phone,
    hasTouch: !!opts.phone,
    reducedMotion: 'reduce',
  });
}

/** Collect page errors so a test can assert the UI never crashed. */
export function watchErrors(page: Page): string[] {
  const errors: string[] = [];
  page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && !/Failed to load resource|WebSocket connection/.test(m.text())) errors.push(`console: ${m.text()}`);
  });
  return errors;
}

export async function shot(page: Page, name: string): Promise<void> {
  mkdirSync(SCREENSHOTS, { recursive: true });
  await page.screenshot({ path: join(SCREENSHOTS, `${name}.png`), fullPage: false });
}

export async function signIn(page: Page, base: string, token: string): Promise<void> {
  await page.goto(base + '/');
  await page.getByLabel('API token').fill(token);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { name: 'Virtual machines' }).waitFor();
}

/** The text the serial console shows (xterm's DOM renderer rows). */
export async function consoleText(page: Page): Promise<string> {
  return page.locator('.console-screen .xterm-rows').innerText();
}

export async function waitForConsole(page: Page, re: RegExp, timeoutMs: number): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  while (Date.now() < deadline) {
    last = await consoleText(page).catch(() => '');
    if (re.test(last)) return last;
    await page.waitForTimeout(250);
  }
  throw new Error(`console never matched ${re} within ${timeoutMs} ms; it shows:\n${last}`);
}
