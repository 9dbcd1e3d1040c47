// Runs the official WuKongIM JS SDK in headless Chromium (Debian's /usr/bin/chromium,
// driven by playwright-core), one page per client, through a scenario given as JSON:
//   node browser.mjs '<json>'
// with json = {addr, clients: [{name?, uid, token, heartbeatMs?, late?}], steps: [...],
// screenshot?, screenshotOf?}. Clients are named by `name` (default: the uid); `late`
// ones open only at an {open} step. Steps, each waiting for its outcome:
//   {open: name}                         open a late client's page and connect it
//   {connect: name}                      a status event
//   {status: name, is: n}                a status event with status n
//   {send: name, to, channelType, text}  its SENDACK
//   {receive: name, count}               that many messages in all
//   {http: url, body}                    POST the body as JSON (an app-server call)
//   {pause: ms}
// Prints {events: {name: [...]}} as JSON and exits 0, or prints {error} and exits 1.
import http from "node:http";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { launch } from "./chromium.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const scenario = JSON.parse(process.argv[2]);
const html = `<!doctype html><meta charset="utf-8"><title>Hongyan × WuKongIM JS SDK</title>
<style>body{font:14px sans-serif;margin:16px}h1{font-size:16px}.message{color:#064}.status{color:#666}.sendack{color:#036}</style>
<h1>WuKongIM JS SDK 1.0.4 as <span id="who"></span></h1><div id="log"></div><script src="/page.js"></script>`;
const bundle = fs.readFileSync(path.join(here, "dist/page.js"));
const server = http.createServer((req, res) => {
  if (req.url === "/page.js") {
    res.writeHead(200, { "content-type": "text/javascript" }).end(bundle);
  } else {
    res.writeHead(200, { "content-type": "text/html; charset=utf-8" }).end(html);
  }
});
await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
const pageUrl = `http://127.0.0.1:${server.address().port}/`;

const browser = await launch("chromium", { width: 640, height: 360 });
const pages = {};
const events = async (uid) => pages[uid].evaluate(() => window.hongyan.events);
const waitFor = async (uid, check, what) => {
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    const seen = await events(uid);
    if (check(seen)) return seen;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`${uid}: timed out waiting for ${what}`);
};
const open = async (client) => {
  // A page per client: its own window, so its own SDK singleton.
  const page = await browser.newPage();
  await page.goto(pageUrl);
  await page.evaluate(([addr, u, t, hb]) => window.hongyan.start(addr, u, t, hb), [
    scenario.addr,
    client.uid,
    client.token,
    client.heartbeatMs ?? null,
  ]);
  pages[client.name ?? client.uid] = page;
};
try {
  for (const client of scenario.clients.filter((c) => !c.late)) await open(client);
  for (const step of scenario.steps) {
    if (step.open) {
      await open(scenario.clients.find((c) => (c.name ?? c.uid) === step.open));
    } else if (step.status !== undefined && step.status !== null && typeof step.status === "string") {
      await waitFor(step.status, (seen) => seen.some((e) => e.event === "status" && e.status === step.is), `status ${step.is}`);
    } else if (step.http) {
      const res = await fetch(step.http, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(step.body) });
      if (!res.ok) throw new Error(`POST ${step.http}: ${res.status}`);
    } else if (step.connect) {
      await waitFor(step.connect, (seen) => seen.some((e) => e.event === "status"), "a status");
    } else if (step.send) {
      const before = (await events(step.send)).filter((e) => e.event === "sendack").length;
      await pages[step.send].evaluate(([to, type, text]) => window.hongyan.send(to, type, text), [step.to, step.channelType, step.text]);
      await waitFor(step.send, (seen) => seen.filter((e) => e.event === "sendack").length > before, "a SENDACK");
    } else if (step.receive) {
      await waitFor(step.receive, (seen) => seen.filter((e) => e.event === "message").length >= step.count, `${step.count} messages`);
    } else if (step.pause) {
      await new Promise((r) => setTimeout(r, step.pause));
    }
  }
  if (scenario.screenshot) {
    const who = scenario.screenshotOf ?? scenario.clients[0].uid;
    await pages[who].screenshot({ path: scenario.screenshot });
  }
  const all = {};
  for (const uid of Object.keys(pages)) all[uid] = await events(uid);
  process.stdout.write(JSON.stringify({ events: all }) + "\n");
} catch (e) {
  process.stdout.write(JSON.stringify({ error: String(e) }) + "\n");
  process.exitCode = 1;
} finally {
  await browser.close();
  server.close();
}
