// The console's Cluster page against a running cluster, in headless Chromium: signs in
// with the manager token, finds the Cluster page offered (it is hidden on a single
// node), and waits until it lists every expected node as online with its owned
// channels, then writes a screenshot. Fails on any error in the page's console.
//   node console-cluster.mjs '{"url", "token", "nodes": [1, 2], "screenshots"}'
// Prints {"ok": true, "screenshot"} and exits 0, or {error} and exits 1.
import fs from "node:fs";
import path from "node:path";
import { launch } from "./chromium.mjs";

const { url, token, nodes, screenshots } = JSON.parse(process.argv[2]);
fs.mkdirSync(screenshots, { recursive: true });
const browser = await launch("console-cluster", { width: 1280, height: 800 });
const problems = [];
const page = await browser.newPage();
const TIMEOUT = 10_000;
try {
  page.on("console", (m) => m.type() === "error" && problems.push(`console error: ${m.text()}`));
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  await page.goto(`${url}/web`);
  await page.getByLabel("Manager token").fill(token);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "Overview" }).waitFor({ timeout: TIMEOUT });
  const clusterButton = page.getByRole("button", { name: "Cluster", exact: true });
  await clusterButton.waitFor({ state: "visible", timeout: TIMEOUT });
  await clusterButton.click();
  await page.getByRole("heading", { name: "Cluster" }).waitFor({ timeout: TIMEOUT });
  // Every node, online ("yes" in the second column), with its last heartbeat.
  await page.waitForFunction(
    (ids) =>
      ids.every((id) =>
        [...document.querySelectorAll("#node-rows tr")].some(
          (tr) =>
            tr.cells[0]?.textContent === String(id) &&
            tr.cells[1]?.textContent === "yes" &&
            / s ago\)$/.test(tr.cells[5]?.textContent ?? ""),
        ),
      ),
    nodes,
    { timeout: TIMEOUT },
  );
  const rows = await page.locator("#node-rows tr").count();
  if (rows !== nodes.length) throw new Error(`${rows} nodes listed, expected ${nodes.length}`);
  const screenshot = path.join(screenshots, "console-cluster.png");
  await page.screenshot({ path: screenshot });
  if (problems.length) throw new Error(problems.join("\n"));
  console.log(JSON.stringify({ ok: true, screenshot }));
  await browser.close();
  process.exit(0);
} catch (e) {
  console.log(JSON.stringify({ error: String(e?.message ?? e), problems }));
  await browser.close().catch(() => {});
  process.exit(1);
}
