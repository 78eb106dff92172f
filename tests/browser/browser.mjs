// The system Chromium driven by playwright-core: no browser is downloaded.
import { accessSync, constants, mkdirSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const packageDir = dirname(fileURLToPath(import.meta.url));

/** Where screenshots go: `MATCHPLANE_SCREENSHOT_DIR`, else the workspace's target/screenshots. */
export const SCREENSHOT_DIR = process.env.MATCHPLANE_SCREENSHOT_DIR ?? resolve(packageDir, "../../target/screenshots");

/** Debian's `chromium` (`apt-get install chromium chromium-driver`), or `CHROMIUM_PATH`. */
export function chromiumPath() {
  const path = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
  try {
    accessSync(path, constants.X_OK);
  } catch {
    throw new Error(`Chromium not found at ${path}: apt-get install chromium chromium-driver, or set CHROMIUM_PATH`);
  }
  return path;
}

/** A headless Chromium; `--no-sandbox` because CI runs the tests as root. */
export function launchChromium() {
  return chromium.launch({ executablePath: chromiumPath(), headless: true, args: ["--no-sandbox"] });
}

/** A fresh page (its own context, so no sessionStorage leaks between tests) at laptop size. */
export async function newPage(browser) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  // Errors the page throws or logs (a content-security-policy refusal is only a console
  // error) would otherwise go unseen; the tests assert on them.
  const pageErrors = [];
  const consoleErrors = [];
  page.on("pageerror", (error) => pageErrors.push(error));
  page.on("console", (message) => {
    if (message.type() === "error") consoleErrors.push(`${message.text()} (${message.location().url})`);
  });
  return { context, page, pageErrors, consoleErrors };
}

/** A full-page screenshot at `<SCREENSHOT_DIR>/<name>.png`; returns its path. */
export async function screenshot(page, name) {
  mkdirSync(SCREENSHOT_DIR, { recursive: true });
  const path = resolve(SCREENSHOT_DIR, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  return path;
}
