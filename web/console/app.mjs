// The operators' console: live figures from /metrics and /varz, connections (search,
// kick), users (devices, conversations, ban and mute), channel attributes and history
// (payloads decoded) with a test send, the webhook queues (retry now), and the
// cluster's nodes.
// Every action is a call to the server's HTTP API, through /web/api on this listener.
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";

const $ = (id) => document.getElementById(id);
const TICK_MS = 2000;
const POINTS = 150; // five minutes of ticks
let token = sessionStorage.getItem("hongyan-token") || "";

const authHeaders = () => (token ? { token } : {});

async function api(method, path, body) {
  const headers = { ...authHeaders(), ...(body ? { "content-type": "application/json" } : {}) };
  const res = await fetch(`/web/api${path}`, { method, headers, body: body ? JSON.stringify(body) : undefined });
  const text = await res.text();
  let answer = null;
  try {
    answer = text ? JSON.parse(text) : null;
  } catch {
    answer = { msg: text };
  }
  if (!res.ok) throw new Error(answer?.msg || `${path}: HTTP ${res.status}`);
  return answer;
}

function setStatus(text) {
  $("status").textContent = text;
}

// ---- sign-in ----------------------------------------------------------------------

async function session() {
  const res = await fetch("/web/session", { headers: authHeaders() });
  return res.json();
}

async function enter() {
  const s = await session();
  if (!s.signed_in) {
    $("app").hidden = true;
    $("signin").hidden = false;
    if (token) $("signin-error").textContent = "That token is not the manager token.";
    $("token").focus();
    return;
  }
  $("signin").hidden = true;
  $("app").hidden = false;
  await start();
}

$("signin-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  token = $("token").value;
  sessionStorage.setItem("hongyan-token", token);
  await enter();
});

// ---- pages ------------------------------------------------------------------------

function show(page) {
  for (const button of document.querySelectorAll("header nav button")) {
    if (button.dataset.page === page) button.setAttribute("aria-current", "page");
    else button.removeAttribute("aria-current");
  }
  for (const section of document.querySelectorAll(".page")) section.hidden = section.id !== page;
  if (page === "connections") loadConnections().catch(fail);
  if (page === "cluster") loadCluster().catch(fail);
  if (page === "webhooks") loadWebhooks().catch(fail);
  if (page === "overview") resizeCharts();
}

for (const button of document.querySelectorAll("header nav button")) {
  button.addEventListener("click", () => show(button.dataset.page));
}

function fail(e) {
  setStatus(e.message || String(e));
}

// ---- overview ---------------------------------------------------------------------

/** Prometheus text → [{name, labels, value}] */
function parseMetrics(text) {
  const out = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = line.match(/^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    for (const pair of (m[2] || "").slice(1, -1).matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[pair[1]] = pair[2];
    out.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return out;
}

const sum = (metrics, name, where = () => true) =>
  metrics.filter((m) => m.name === name && where(m.labels)).reduce((a, m) => a + m.value, 0);

const series = { t: [], connections: [], sends: [], deliveries: [], logins: [], commit: [] };
let previous = null;
const charts = {};

function chart(id, labels, colors) {
  const el = $(id);
  const opts = {
    width: el.clientWidth || 380,
    height: 190,
    legend: { show: true },
    scales: { x: { time: true } },
    series: [{}, ...labels.map((label, i) => ({ label, stroke: colors[i], width: 2 }))],
    axes: [{}, { size: 50 }],
  };
  charts[id] = new uPlot(opts, [[], ...labels.map(() => [])], el);
}

function resizeCharts() {
  for (const [id, c] of Object.entries(charts)) {
    const width = $(id).clientWidth;
    if (width) c.setSize({ width, height: 190 });
  }
}

function setTile(id, value, text) {
  const el = $(id);
  el.dataset.value = String(value);
  el.textContent = text ?? String(value);
}

function push(key, value) {
  series[key].push(value);
  if (series[key].length > POINTS) series[key].shift();
}

async function sample() {
  const res = await fetch("/metrics", { headers: authHeaders() });
  if (!res.ok) throw new Error(`/metrics: HTTP ${res.status}`);
  const metrics = parseMetrics(await res.text());
  const now = Date.now() / 1000;
  const counters = {
    sends: sum(metrics, "hongyan_core_sends_total"),
    deliveries: sum(metrics, "hongyan_core_deliveries_total"),
    logins: sum(metrics, "hongyan_gateway_handshakes_total", (l) => l.result === "ok"),
  };
  const byTransport = (t) => sum(metrics, "hongyan_gateway_connections", (l) => l.transport === t);
  const connections = byTransport("tcp") + byTransport("ws") + byTransport("wss");
  const last = previous;
  const rate = (k) => (last && now > last.at ? Math.max(0, (counters[k] - last.counters[k]) / (now - last.at)) : 0);
  const commit = sum(metrics, "hongyan_log_commit_seconds", (l) => l.quantile === "0.99") * 1000;
  previous = { at: now, counters };

  setTile("stat-connections", connections);
  $("stat-transports").textContent = `${byTransport("tcp")} / ${byTransport("ws")} / ${byTransport("wss")}`;
  setTile("stat-logins", Math.round(rate("logins")));
  setTile("stat-sends", Math.round(rate("sends")));
  setTile("stat-deliveries", Math.round(rate("deliveries")));
  $("stat-commit").textContent = commit ? `${commit.toFixed(1)} ms` : "–";
  $("stat-queues").textContent =
    `${sum(metrics, "hongyan_log_queue_depth")} / ${sum(metrics, "hongyan_core_fanout_queue_depth")}`;
  $("stat-webhooks").textContent = String(sum(metrics, "hongyan_webhook_pending"));
  $("stat-retries").textContent = String(sum(metrics, "hongyan_core_retry_pending"));

  push("t", now);
  push("connections", connections);
  push("sends", rate("sends"));
  push("deliveries", rate("deliveries"));
  push("logins", rate("logins"));
  push("commit", commit || null);
  charts["chart-connections"].setData([series.t, series.connections]);
  charts["chart-rates"].setData([series.t, series.sends, series.deliveries, series.logins]);
  charts["chart-latency"].setData([series.t, series.commit]);

  const varz = await api("GET", "/varz");
  $("stat-rss").textContent = `${(varz.mem_rss_bytes / 1048576).toFixed(1)} MiB`;
  $("node").textContent = `node ${varz.server_id} · up ${Math.floor(varz.uptime_secs / 60)} min`;
  setStatus(`updated ${new Date().toLocaleTimeString()}`);
}

// ---- connections ------------------------------------------------------------------

const DEVICE = ["app", "web", "pc"];

async function loadConnections() {
  const uid = $("conn-uid").value.trim();
  const query = uid ? `?uid=${encodeURIComponent(uid)}&limit=100` : "?limit=100";
  const page = await api("GET", `/connz${query}`);
  $("conn-count").textContent = `${page.total} connection${page.total === 1 ? "" : "s"}`;
  $("conn-rows").replaceChildren(
    ...page.connections.map((c) => {
      const row = document.createElement("tr");
      row.dataset.uid = c.uid;
      row.dataset.id = String(c.id);
      const cells = [
        c.id,
        c.node_id,
        c.uid,
        `${DEVICE[c.device_flag] ?? c.device_flag} (${c.device_level === 1 ? "master" : "slave"}) ${c.device_id}`,
        `${c.ip}:${c.port}`,
        c.transport,
        `${Math.floor(c.uptime_secs / 60)} min ago`,
      ].map((text) => {
        const td = document.createElement("td");
        td.textContent = String(text);
        return td;
      });
      const action = document.createElement("td");
      const kick = document.createElement("button");
      kick.type = "button";
      kick.textContent = "Kick";
      kick.setAttribute("aria-label", `Kick ${c.uid}'s connection ${c.id}`);
      kick.addEventListener("click", async () => {
        try {
          await api("POST", "/conn/kick", { uid: c.uid, conn_id: c.id, node_id: c.node_id });
          setStatus(`kicked ${c.uid} (${c.id})`);
          await loadConnections();
        } catch (e) {
          fail(e);
        }
      });
      action.append(kick);
      row.append(...cells, action);
      return row;
    }),
  );
}

$("conn-search").addEventListener("submit", (event) => {
  event.preventDefault();
  loadConnections().catch(fail);
});

// ---- users ------------------------------------------------------------------------

const cell = (text) => {
  const td = document.createElement("td");
  td.textContent = String(text);
  return td;
};

/** The user's person-channel attributes: ban and mute (send_ban) live there. */
let userInfo = null;

async function loadUser() {
  const uid = $("user-uid").value.trim();
  const [devices, connz, conversations, info] = await Promise.all([
    api("GET", `/user/devices?uid=${encodeURIComponent(uid)}`),
    api("GET", `/connz?uid=${encodeURIComponent(uid)}&limit=100`),
    api("POST", "/conversation/sync", { uid, version: 0, msg_count: 1 }),
    api("GET", `/channel/info?channel_id=${encodeURIComponent(uid)}&channel_type=1`),
  ]);
  userInfo = info;
  const online = connz.total;
  $("user-state").textContent =
    `${uid}: ${online ? `online (${online} connection${online === 1 ? "" : "s"})` : "offline"}` +
    `${info.ban ? " · banned" : ""}${info.send_ban ? " · muted" : ""}`;
  $("user-state").dataset.banned = String(info.ban);
  $("user-ban").textContent = info.ban ? "Unban" : "Ban";
  $("user-mute").textContent = info.send_ban ? "Unmute" : "Mute";
  $("device-rows").replaceChildren(
    ...devices.map((d) => {
      const row = document.createElement("tr");
      const here = connz.connections.filter((c) => c.device_flag === d.device_flag).length;
      row.append(cell(DEVICE[d.device_flag] ?? d.device_flag), cell(d.device_level === 1 ? "master" : "slave"), cell(here));
      return row;
    }),
  );
  $("conversation-rows").replaceChildren(
    ...conversations.map((c) => {
      const row = document.createElement("tr");
      row.dataset.channel = c.channel_id;
      const last = c.recents?.[0] ? decodePayload(c.recents[0].payload).text.replace(/\s+/g, " ").slice(0, 80) : "";
      row.append(cell(c.channel_id), cell(c.channel_type), cell(c.unread), cell(c.last_msg_seq), cell(last));
      return row;
    }),
  );
  $("user").hidden = false;
}

/** Flips one attribute of the user's person channel, keeping the others. */
async function toggleUser(attribute) {
  const uid = $("user-uid").value.trim();
  const next = { ...userInfo, [attribute]: userInfo[attribute] ? 0 : 1 };
  const body = { channel_id: uid, channel_type: 1 };
  for (const key of ["ban", "disband", "send_ban", "large", "allow_stranger"]) body[key] = next[key];
  await api("POST", "/channel/info", body);
  setStatus(`${uid}: ${attribute === "ban" ? (next.ban ? "banned" : "unbanned") : next.send_ban ? "muted" : "unmuted"}`);
  await loadUser();
}

$("user-search").addEventListener("submit", (event) => {
  event.preventDefault();
  loadUser().catch(fail);
});
$("user-ban").addEventListener("click", () => toggleUser("ban").catch(fail));
$("user-mute").addEventListener("click", () => toggleUser("send_ban").catch(fail));

// ---- channels ---------------------------------------------------------------------

function decodePayload(b64) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  try {
    const text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
    try {
      return { kind: "JSON", text: JSON.stringify(JSON.parse(text), null, 2) };
    } catch {
      return { kind: "text", text };
    }
  } catch {
    const hex = [...bytes].map((b) => b.toString(16).padStart(2, "0")).join(" ");
    return { kind: "binary (hex)", text: hex };
  }
}

async function loadHistory() {
  const id = $("channel-id").value.trim();
  const type = Number($("channel-type").value);
  const as = $("channel-as").value.trim();
  const [page, max, info] = await Promise.all([
    api("POST", "/channel/messagesync", {
      login_uid: as,
      channel_id: id,
      channel_type: type,
      start_message_seq: 0,
      end_message_seq: 0,
      pull_mode: 0,
      limit: 50,
    }),
    api("GET", `/channel/max_message_seq?channel_id=${encodeURIComponent(id)}&channel_type=${type}`).catch(() => null),
    api("GET", `/channel/info?channel_id=${encodeURIComponent(id)}&channel_type=${type}`),
  ]);
  // Newest first.
  const messages = (page.messages || []).sort((a, b) => b.message_seq - a.message_seq);
  const last = max?.message_seq ?? (messages.length ? messages[0].message_seq : 0);
  const flags = ["ban", "disband", "send_ban", "large", "allow_stranger"].filter((k) => info[k]);
  $("channel-info").textContent =
    `${id} (type ${type}): ${flags.length ? flags.join(", ") : "no attributes set"} · last seq ${last}, ` +
    `the newest ${messages.length} below`;
  $("history").replaceChildren(
    ...messages.map((m) => {
      const item = document.createElement("li");
      item.dataset.seq = String(m.message_seq);
      const meta = document.createElement("div");
      meta.className = "meta";
      const payload = decodePayload(m.payload);
      const when = new Date(m.timestamp * 1000).toLocaleString();
      // message_idstr: ids pass 2^53, beyond what a JavaScript number holds exactly.
      const messageId = m.message_idstr ?? String(m.message_id);
      meta.textContent = `#${m.message_seq} · ${m.from_uid || "(system)"} · ${when} · id ${messageId} · ${payload.kind}`;
      const body = document.createElement("pre");
      body.textContent = payload.text;
      item.append(meta, body);
      return item;
    }),
  );
  $("channel-send").hidden = false;
}

$("channel-open").addEventListener("submit", (event) => {
  event.preventDefault();
  loadHistory().catch(fail);
});

$("channel-send").addEventListener("submit", async (event) => {
  event.preventDefault();
  const content = JSON.stringify({ type: 1, content: $("send-text").value });
  const payload = btoa(String.fromCharCode(...new TextEncoder().encode(content)));
  try {
    await api("POST", "/message/send", {
      from_uid: "",
      channel_id: $("channel-id").value.trim(),
      channel_type: Number($("channel-type").value),
      payload,
    });
    $("send-text").value = "";
    await loadHistory();
  } catch (e) {
    fail(e);
  }
});

// ---- webhooks ---------------------------------------------------------------------

async function loadWebhooks() {
  const status = await api("GET", "/webhook/status");
  $("webhooks-state").textContent = status.enabled
    ? "Events wait in a durable queue per event until the app server answers 2xx."
    : "Webhooks are off (webhook.url is empty).";
  $("webhooks-retry").hidden = !status.enabled;
  $("webhook-rows").replaceChildren(
    ...status.events.map((e) => {
      const row = document.createElement("tr");
      row.dataset.event = e.event;
      row.dataset.retries = String(e.retries);
      const at = e.last_error_at_ms ? new Date(e.last_error_at_ms).toLocaleTimeString() : "–";
      row.append(
        cell(e.event),
        cell(e.pending),
        cell(e.failing ? "retrying" : "ok"),
        cell(e.retries),
        cell(e.last_error ?? "–"),
        cell(at),
      );
      return row;
    }),
  );
}

$("webhooks-retry").addEventListener("click", async () => {
  try {
    await api("POST", "/webhook/retry");
    setStatus("webhook retries started");
    await loadWebhooks();
  } catch (e) {
    fail(e);
  }
});

// ---- cluster ----------------------------------------------------------------------

async function loadCluster() {
  const nodes = await api("GET", "/cluster/nodes");
  $("node-rows").replaceChildren(
    ...nodes.map((n) => {
      const row = document.createElement("tr");
      const heartbeat = n.last_heartbeat ? new Date(n.last_heartbeat).toLocaleTimeString() : "–";
      for (const text of [n.id, n.online ? "yes" : "no", n.api_addr ?? "", n.connections ?? 0, n.owned_channels ?? 0, heartbeat]) {
        const td = document.createElement("td");
        td.textContent = String(text);
        row.append(td);
      }
      return row;
    }),
  );
  return nodes;
}

// ---- start ------------------------------------------------------------------------

let started = false;
async function start() {
  if (started) return;
  started = true;
  chart("chart-connections", ["connections"], ["#0b5cad"]);
  chart("chart-rates", ["sends/s", "deliveries/s", "logins/s"], ["#0b5cad", "#1a7f37", "#b35c00"]);
  chart("chart-latency", ["commit p99 (ms)"], ["#8e24aa"]);
  const nodes = await api("GET", "/cluster/nodes").catch(() => []);
  document.querySelector('header nav button[data-page="cluster"]').hidden = nodes.length < 2;
  const tick = () => {
    sample().catch(fail);
    if (!$("webhooks").hidden) loadWebhooks().catch(fail);
  };
  await tick();
  setInterval(tick, TICK_MS);
  window.addEventListener("resize", resizeCharts);
}

enter().catch(fail);
