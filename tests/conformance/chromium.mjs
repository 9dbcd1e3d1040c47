// Headless Chromium for the browser tests: Debian's /usr/bin/chromium (or $CHROMIUM),
// driven by playwright-core, in a fresh profile, with nothing that reaches the network
// on its own. The profile is removed when the process exits (the browser is closed by
// then; Chromium may still be writing to it while it closes).
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

export async function launch(name, viewport) {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), `hongyan-${name}-`));
  // A persistent context: playwright takes the profile as --user-data-dir.
  const browser = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    viewport,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  process.on("exit", () => {
    try {
      fs.rmSync(profile, { recursive: true, force: true, maxRetries: 3 });
    } catch {
      // Left in the temporary folder: harmless.
    }
  });
  return browser;
}
