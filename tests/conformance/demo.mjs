// Drives the demo chat (/chatdemo) in headless Chromium as a person would: two pages
// sign in as two uids, chat both ways one-to-one, see delivery ticks and unread
// counts, open history, chat in a group, react to a message and revoke one (each page
// seeing the other's change); then the server restarts and both pages reconnect by
// themselves and chat on. Fails on any error in a page's console.
//   node demo.mjs '{"url": "http://127.0.0.1:PORT", "screenshots": "DIR"}'
// Prints {"restart": true} when the server should restart, then waits for a line on
// stdin saying it has. Prints {"ok": true, "screenshots": [...]} and exits 0, or prints
// {error} and exits 1.
import fs from "node:fs";
import path from "node:path";
import { launch } from "./chromium.mjs";

const { url, screenshots } = JSON.parse(process.argv[2]);
fs.mkdirSync(screenshots, { recursive: true });
const browser = await launch("demo", { width: 1280, height: 800 });
const problems = [];
const shots = [];
const shoot = async (page, name) => {
  const file = path.join(screenshots, `${name}.png`);
  await page.screenshot({ path: file });
  shots.push(file);
};
const TIMEOUT = 10_000;

async function signIn(uid) {
  const page = await browser.newPage();
  page.on("console", (m) => m.type() === "error" && problems.push(`${uid}: console error: ${m.text()}`));
  page.on("pageerror", (e) => problems.push(`${uid}: page error: ${e.message}`));
  await page.goto(`${url}/chatdemo`);
  await page.getByLabel("Your user id").fill(uid);
  if (uid === "alice") await shoot(page, "demo-signin");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.locator("#status.connected").waitFor({ timeout: TIMEOUT });
  return page;
}

/** Sends `text` in the open conversation and waits for its delivery tick. */
async function send(page, text) {
  await page.getByLabel("Message").fill(text);
  await page.keyboard.press("Enter");
  const mine = page.locator("#messages li.mine", { hasText: text });
  await mine.locator('.tick[data-state="acked"]').waitFor({ timeout: TIMEOUT });
}

const unread = (page, key) => page.locator(`#conversations li[data-key="${key}"] .unread`);

async function expectUnread(page, key, count) {
  await page.locator(`#conversations li[data-key="${key}"] .unread[data-count="${count}"]`).waitFor({
    state: "attached",
    timeout: TIMEOUT,
  });
}

try {
  const alice = await signIn("alice");
  const bob = await signIn("bob");

  // One-to-one: alice opens a chat with bob and writes; the SENDACK ticks it.
  await alice.getByLabel("Chat with").fill("bob");
  await alice.getByRole("button", { name: "Open" }).click();
  await alice.getByRole("heading", { name: "Chat with bob" }).waitFor({ timeout: TIMEOUT });
  await send(alice, "hello bob");
  await send(alice, "are you there?");

  // bob sees the conversation with two unread, opens it: history, then read.
  await expectUnread(bob, "1:alice", 2);
  await shoot(bob, "demo-unread");
  await bob.locator('#conversations li[data-key="1:alice"] button').click();
  await bob.locator("#messages li", { hasText: "are you there?" }).waitFor({ timeout: TIMEOUT });
  const texts = async (page) => (await page.locator("#messages li .text").allTextContents()).join("|");
  const history = await texts(bob);
  if (history !== "hello bob|are you there?") throw new Error(`bob's history: ${history}`);
  // Each message once on the sender's page too.
  if ((await texts(alice)) !== history) throw new Error(`alice's page: ${await texts(alice)}`);
  await expectUnread(bob, "1:alice", 0);
  await send(bob, "hi alice");

  // alice has the chat open: the reply appears in it, unread stays 0.
  await alice.locator("#messages li:not(.mine)", { hasText: "hi alice" }).waitFor({ timeout: TIMEOUT });
  await expectUnread(alice, "1:bob", 0);

  // A group: alice creates it with bob; bob, in another conversation, gets an unread.
  await alice.getByLabel("New group").fill("tea");
  await alice.getByLabel("Members").fill("bob");
  await alice.getByRole("button", { name: "Create" }).click();
  await alice.getByRole("heading", { name: "Group tea" }).waitFor({ timeout: TIMEOUT });
  await send(alice, "tea at four?");
  await expectUnread(bob, "2:tea", 1);
  await bob.locator('#conversations li[data-key="2:tea"] button').click();
  await bob.locator("#messages li", { hasText: "tea at four?" }).waitFor({ timeout: TIMEOUT });
  await send(bob, "yes");
  await alice.locator("#messages li:not(.mine)", { hasText: "yes" }).waitFor({ timeout: TIMEOUT });
  if ((await texts(alice)) !== "tea at four?|yes") throw new Error(`alice's group: ${await texts(alice)}`);

  // bob reacts to alice's question: his page shows it at once; alice's SDK hears of the
  // change (a command message) and her page reads the extras again. Then alice revokes
  // the question and bob's page shows it revoked.
  const question = (page) => page.locator('#messages li[data-seq="1"]');
  await question(bob).getByRole("button", { name: "React ♥" }).click();
  await question(bob).locator('.react[aria-pressed="true"][data-count="1"]').waitFor({ timeout: TIMEOUT });
  await question(alice).locator('.react[aria-pressed="false"][data-count="1"]').waitFor({ timeout: TIMEOUT });
  await question(alice).getByRole("button", { name: "Revoke" }).click();
  await question(bob).locator(".text", { hasText: "revoked by its sender" }).waitFor({ timeout: TIMEOUT });
  if (await question(bob).getByRole("button", { name: "Revoke" }).count()) throw new Error("bob may revoke alice's");
  // Both pages have read the change the server told them of (version 2: the reaction
  // was 1) before the server goes away.
  for (const page of [alice, bob]) {
    await page.locator('#messages[data-extra-version="2"]').waitFor({ state: "attached", timeout: TIMEOUT });
  }

  // The server restarts: both pages reconnect by themselves (and sign in to the demo
  // again, which forgot them) and the group goes on.
  console.log(JSON.stringify({ restart: true }));
  await new Promise((resolve) => process.stdin.once("data", resolve));
  for (const page of [alice, bob]) {
    await page.locator('#status.connected[data-connects="2"]').waitFor({ timeout: 20_000 });
  }
  await send(alice, "still there?");
  await bob.locator("#messages li", { hasText: "still there?" }).waitFor({ timeout: TIMEOUT });
  // The reloaded history still shows the revoke.
  await question(bob).locator(".text", { hasText: "revoked by its sender" }).waitFor({ timeout: TIMEOUT });
  await shoot(alice, "demo-chat");

  // Phone width: the same page, stacked.
  await bob.setViewportSize({ width: 390, height: 800 });
  await shoot(bob, "demo-phone");
  if ((await unread(bob, "2:tea").getAttribute("data-count")) !== "0") throw new Error("the open group is not read");
  if (problems.length) throw new Error(problems.join("\n"));
  console.log(JSON.stringify({ ok: true, screenshots: shots }));
  await browser.close();
  process.exit(0);
} catch (e) {
  console.log(JSON.stringify({ error: String(e?.message ?? e), problems, screenshots: shots }));
  await browser.close().catch(() => {});
  process.exit(1);
}
