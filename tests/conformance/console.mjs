// Drives the operators' console (/web) in headless Chromium: signs in with the manager
// token (after a wrong one), watches the overview's figures move under the load the
// caller makes (connections, rates, SENDACK latency, CPU), finds a connection by uid,
// device and address and kicks it, looks the user up (devices, conversations with
// unread counts) and bans them, finds a channel by id prefix, opens its history with
// the payloads decoded (an edit and a reaction shown, a message revoked with its
// button), sends a test message, edits its subscriber list and blacklist
// and its attributes, retries the webhooks of a receiver that is down, then checks
// every page at phone width (nothing wider than the screen) and that every control is
// labelled and the pages are reachable by keyboard. Fails on any error in the page's
// console.
//   node console.mjs '{"url", "token", "uid", "channel", "history", "screenshots"}'
// (`channel`: a group `uid` has unread messages in; `history`: a group holding a JSON
// message "hello notes", edited to "hello, notes" and given a "+1", and a binary one,
// ff 00 fe, whose only subscriber is "ann")
// Prints {"ok": true, "screenshots": [...]} and exits 0, or {error} and exits 1.
import fs from "node:fs";
import path from "node:path";
import { launch } from "./chromium.mjs";

const { url, token, uid, channel, history, screenshots } = JSON.parse(process.argv[2]);
fs.mkdirSync(screenshots, { recursive: true });
const browser = await launch("console", { width: 1280, height: 800 });
const problems = [];
const shots = [];
const TIMEOUT = 10_000;

const page = await browser.newPage();
try {
  page.on("console", (m) => m.type() === "error" && problems.push(`console error: ${m.text()}`));
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  const shoot = async (name) => {
    const file = path.join(screenshots, `${name}.png`);
    await page.screenshot({ path: file });
    shots.push(file);
  };

  // Sign in: a wrong token is refused, the manager token lets us in.
  await page.goto(`${url}/web`);
  await page.getByLabel("Manager token").fill("not-the-token");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByText("That token is not the manager token.").waitFor({ timeout: TIMEOUT });
  await page.getByLabel("Manager token").fill(token);
  await shoot("console-signin");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "Overview" }).waitFor({ timeout: TIMEOUT });

  // The overview follows the load: two connections (the watcher and the sender), sends
  // and deliveries per second, the sender's SENDACK latency, the server's CPU.
  await page.locator('#stat-connections[data-value="2"]').waitFor({ timeout: TIMEOUT });
  await page.waitForFunction(
    () => ["stat-sends", "stat-deliveries", "stat-sendack"].every((id) => Number(document.getElementById(id).dataset.value) > 0) &&
      /%$/.test(document.getElementById("stat-cpu").textContent),
    null,
    { timeout: TIMEOUT },
  );
  if (!(await page.locator('header nav button[data-page="cluster"]').isHidden())) {
    throw new Error("the cluster page is offered on a single node");
  }
  await page.waitForTimeout(4500); // a few more points on the charts, for the screenshot
  await shoot("console-overview");

  // Connections: an address nobody uses finds nothing; the user's connection by uid,
  // device and address shows within 2 s; kick it, see it leave.
  await page.getByRole("button", { name: "Connections" }).click();
  await page.getByLabel("IP address").fill("10.1.2.3");
  await page.getByRole("button", { name: "Search" }).click();
  await page.locator("#conn-count", { hasText: "0 connections" }).waitFor({ timeout: TIMEOUT });
  await page.getByLabel("User id").fill(uid);
  await page.getByLabel("Device", { exact: true }).selectOption("app");
  await page.getByLabel("Device id").fill("d");
  await page.getByLabel("IP address").fill("127.0.0.1");
  await page.getByRole("button", { name: "Search" }).click();
  const row = page.locator(`#conn-rows tr[data-uid="${uid}"]`);
  await row.waitFor({ timeout: 2000 });
  await page.locator("#conn-count", { hasText: "1 connection" }).waitFor({ timeout: TIMEOUT });
  await shoot("console-connections");
  await row.getByRole("button", { name: /^Kick / }).click();
  await row.waitFor({ state: "detached", timeout: TIMEOUT });
  await page.locator("#conn-count", { hasText: "0 connections" }).waitFor({ timeout: TIMEOUT });

  // Users: the kicked user's devices (levels, never tokens), conversations with unread
  // counts; then a ban.
  await page.getByRole("button", { name: "Users", exact: true }).click();
  await page.getByLabel("User to look up").fill(uid);
  await page.getByRole("button", { name: "Look up" }).click();
  await page.locator("#user-state", { hasText: `${uid}: offline` }).waitFor({ timeout: TIMEOUT });
  await page.locator("#device-rows tr", { hasText: "master" }).waitFor({ timeout: TIMEOUT });
  const conversation = page.locator(`#conversation-rows tr[data-channel="${channel}"]`);
  await conversation.waitFor({ timeout: TIMEOUT });
  const unread = Number(await conversation.locator("td").nth(2).textContent());
  if (!(unread > 0)) throw new Error(`${channel} shows ${unread} unread for ${uid}`);
  await shoot("console-users");
  await page.getByRole("button", { name: "Ban", exact: true }).click();
  await page.locator('#user-state[data-banned="1"]', { hasText: "banned" }).waitFor({ timeout: TIMEOUT });

  // Channels: found by the start of its id and opened; the history with payloads
  // decoded, then a test message.
  await page.getByRole("button", { name: "Channels" }).click();
  await page.getByLabel("Id starts with").fill(history.slice(0, 2));
  await page.getByRole("button", { name: "Find" }).click();
  await page.getByRole("button", { name: `Open ${history}`, exact: true }).click();
  await page.locator("#history li pre", { hasText: '"content": "hello notes"' }).waitFor({ timeout: TIMEOUT });
  await page.locator("#history li .meta", { hasText: "binary (hex)" }).waitFor({ timeout: TIMEOUT });
  await page.locator("#history li pre", { hasText: "ff 00 fe" }).waitFor({ timeout: TIMEOUT });
  // What happened since: the JSON one edited and reacted to; the binary one revoked
  // with its button.
  await page.locator('#history li[data-seq="1"] .extra', { hasText: "+1 1" }).waitFor({ timeout: TIMEOUT });
  await page.locator('#history li[data-seq="1"] pre.edited', { hasText: '"content": "hello, notes"' }).waitFor({ timeout: TIMEOUT });
  await page.getByRole("button", { name: "Revoke message #2", exact: true }).click();
  await page.locator('#history li.revoked[data-seq="2"] .extra', { hasText: "revoked by the app server" }).waitFor({ timeout: TIMEOUT });
  await page.locator("#history").scrollIntoViewIfNeeded();
  await shoot("console-history");
  await page.getByLabel("Test message (sent as the system uid)").fill("from the console");
  await page.getByRole("button", { name: "Send" }).click();
  await page.locator("#history li pre", { hasText: '"content": "from the console"' }).waitFor({ timeout: TIMEOUT });
  // Its lists: add dave and carol to the subscribers, take carol off again, blacklist
  // mallory; then mark it large.
  const subscribers = page.locator('.list[data-list="subscribers"]');
  await subscribers.locator('tr[data-uid="ann"]').waitFor({ timeout: TIMEOUT });
  for (const who of ["dave", "carol"]) {
    await page.getByLabel("Add to subscribers").fill(who);
    await subscribers.getByRole("button", { name: "Add" }).click();
    await subscribers.locator(`tr[data-uid="${who}"]`).waitFor({ timeout: TIMEOUT });
  }
  await page.getByRole("button", { name: "Remove carol from subscribers" }).click();
  await subscribers.locator('tr[data-uid="carol"]').waitFor({ state: "detached", timeout: TIMEOUT });
  await page.getByLabel("Add to blacklist").fill("mallory");
  await page.locator('.list[data-list="blacklist"]').getByRole("button", { name: "Add" }).click();
  await page.locator('.list[data-list="blacklist"] tr[data-uid="mallory"]').waitFor({ timeout: TIMEOUT });
  await page.getByLabel("large").check();
  await page.getByRole("button", { name: "Save attributes" }).click();
  await page.locator('#attributes[data-saved="00010"]').waitFor({ timeout: TIMEOUT });
  await shoot("console-channels");

  // Webhooks: the receiver is down, so events wait and fail; "Retry now" posts them
  // again at once (the server's retry wait is far longer than this test).
  await page.getByRole("button", { name: "Webhooks" }).click();
  const presence = page.locator('#webhook-rows tr[data-event="user.onlinestatus"]');
  await presence.filter({ hasText: "retrying" }).waitFor({ timeout: TIMEOUT });
  const before = Number(await presence.getAttribute("data-retries"));
  await shoot("console-webhooks");
  await page.getByRole("button", { name: "Retry now" }).click();
  await page.waitForFunction(
    (n) => Number(document.querySelector('#webhook-rows tr[data-event="user.onlinestatus"]')?.dataset.retries) > n,
    before,
    { timeout: TIMEOUT },
  );

  // Every control has a name a screen reader can say.
  const unnamed = await page.evaluate(() =>
    [...document.querySelectorAll("input, select, button")]
      .filter((el) => !(el.labels?.length || el.getAttribute("aria-label") || (el.tagName === "BUTTON" && el.textContent.trim())))
      .map((el) => el.outerHTML.slice(0, 80)),
  );
  if (unnamed.length) throw new Error(`controls without a label: ${unnamed.join(", ")}`);
  // The pages are reached by keyboard: Tab to the Users button, Enter.
  await page.locator("body").focus();
  for (let i = 0; i < 30 && (await page.evaluate(() => document.activeElement?.dataset?.page)) !== "users"; i++) {
    await page.keyboard.press("Tab");
  }
  await page.keyboard.press("Enter");
  await page.getByRole("heading", { name: "Users" }).waitFor({ timeout: TIMEOUT });
  // At phone width every page fits the screen (wide tables scroll inside themselves).
  await page.setViewportSize({ width: 390, height: 844 });
  for (const name of ["Overview", "Connections", "Users", "Channels", "Webhooks"]) {
    await page.getByRole("button", { name, exact: true }).click();
    await page.getByRole("heading", { name, exact: true }).waitFor({ timeout: TIMEOUT });
    const [wide, screen] = await page.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
    if (wide > screen) throw new Error(`${name} is ${wide} px wide on a ${screen} px screen`);
    if (name === "Overview" || name === "Channels") await shoot(`console-phone-${name.toLowerCase()}`);
  }

  if (problems.length) throw new Error(problems.join("\n"));
  console.log(JSON.stringify({ ok: true, screenshots: shots }));
  await browser.close();
  process.exit(0);
} catch (e) {
  // What the page showed when it failed, for whoever reads the error.
  const failure = path.join(screenshots, "console-failure.png");
  await page.screenshot({ path: failure }).catch(() => {});
  const tiles = await page.locator(".tiles").innerText().catch(() => "");
  console.log(JSON.stringify({ error: String(e?.message ?? e), problems, tiles, failure, screenshots: shots }));
  await browser.close().catch(() => {});
  process.exit(1);
}
