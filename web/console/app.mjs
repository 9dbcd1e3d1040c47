// The operators' console: live figures from /metrics and /varz, connections (search by
// user, device and address; kick), users (devices, conversations, ban and mute),
// channels (search by id prefix, attributes, subscriber/black/white lists, history with
// payloads decoded and what happened to each message since — revoked, edited, read,
// reacted to — with Revoke, a test send), the webhook queues (retry now), and the
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

const series = { t: [], connections: [], sends: [], deliveries: [], logins: [], commit: [], ack50: [], ack99: [], cpu: [], rss: [] };
let previous = null;
const charts = {};

/** A chart of `labels`; with `scales`, each series on its own y scale (an axis each). */
function chart(id, labels, colors, scales) {
  const el = $(id);
  const axes = scales
    ? [{}, ...scales.map((scale, i) => ({ scale, size: 50, side: i === 0 ? 3 : 1, grid: { show: i === 0 } }))]
    : [{}, { size: 50 }];
  const opts = {
    width: el.clientWidth || 380,
    height: 190,
    legend: { show: true },
    scales: { x: { time: true } },
    series: [{}, ...labels.map((label, i) => ({ label, stroke: colors[i], width: 2, ...(scales ? { scale: scales[i] } : {}) }))],
    axes,
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
  const ack = (q) => sum(metrics, "hongyan_core_sendack_seconds", (l) => l.quantile === q) * 1000;
  const [ack50, ack99] = [ack("0.5"), ack("0.99")];
  const varz = await api("GET", "/varz");
  const cpu = last && now > last.at ? Math.max(0, ((varz.cpu_seconds - last.cpu) / (now - last.at)) * 100) : null;
  previous = { at: now, counters, cpu: varz.cpu_seconds };

  setTile("stat-connections", connections);
  $("stat-transports").textContent = `${byTransport("tcp")} / ${byTransport("ws")} / ${byTransport("wss")}`;
  setTile("stat-logins", Math.round(rate("logins")));
  setTile("stat-sends", Math.round(rate("sends")));
  setTile("stat-deliveries", Math.round(rate("deliveries")));
  $("stat-commit").textContent = commit ? `${commit.toFixed(1)} ms` : "–";
  setTile("stat-sendack", ack99, ack99 ? `${ack50.toFixed(1)} / ${ack99.toFixed(1)} ms` : "–");
  const rss = varz.mem_rss_bytes / 1048576;
  $("stat-rss").textContent = `${rss.toFixed(1)} MiB`;
  if (cpu !== null) setTile("stat-cpu", cpu, `${cpu.toFixed(1)} %`);
  $("stat-queues").textContent =
    `${sum(metrics, "hongyan_log_queue_depth")} / ${sum(metrics, "hongyan_core_fanout_queue_depth")}`;
  $("stat-held").textContent = `${(sum(metrics, "hongyan_gateway_held_bytes") / 1024).toFixed(1)} KiB`;
  $("stat-webhooks").textContent = String(sum(metrics, "hongyan_webhook_pending"));
  $("stat-retries").textContent = String(sum(metrics, "hongyan_core_retry_pending"));

  push("t", now);
  push("connections", connections);
  push("sends", rate("sends"));
  push("deliveries", rate("deliveries"));
  push("logins", rate("logins"));
  push("commit", commit || null);
  push("ack50", ack50 || null);
  push("ack99", ack99 || null);
  push("cpu", cpu);
  push("rss", rss);
  charts["chart-connections"].setData([series.t, series.connections]);
  charts["chart-rates"].setData([series.t, series.sends, series.deliveries, series.logins]);
  charts["chart-latency"].setData([series.t, series.ack50, series.ack99, series.commit]);
  charts["chart-cpu"].setData([series.t, series.cpu, series.rss]);

  $("node").textContent = `node ${varz.server_id} · up ${Math.floor(varz.uptime_secs / 60)} min`;
  setStatus(`updated ${new Date().toLocaleTimeString()}`);
}

// ---- connections ------------------------------------------------------------------

const DEVICE = ["app", "web", "pc"];

async function loadConnections() {
  const query = new URLSearchParams({ limit: "100" });
  for (const [key, input] of [["uid", "conn-uid"], ["device_flag", "conn-device"], ["device_id", "conn-device-id"], ["ip", "conn-ip"]]) {
    const value = $(input).value.trim();
    if (value) query.set(key, value);
  }
  const page = await api("GET", `/connz?${query}`);
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

const CHANNEL_TYPES = [
  [2, "group (2)"],
  [1, "person (1)"],
  [3, "customer service (3)"],
  [4, "community (4)"],
];
for (const select of document.querySelectorAll(".channel-types")) {
  select.replaceChildren(
    ...CHANNEL_TYPES.map(([value, label]) => Object.assign(document.createElement("option"), { value, textContent: label })),
  );
}
const ATTRIBUTES = ["ban", "disband", "send_ban", "large", "allow_stranger"];

/** The channel the page shows: {id, type}. */
let opened = null;
const channelOf = () => ({ channel_id: opened.id, channel_type: opened.type });
const channelQuery = () => `channel_id=${encodeURIComponent(opened.id)}&channel_type=${opened.type}`;

async function search() {
  const type = $("search-type").value;
  const prefix = $("search-prefix").value.trim();
  const found = await api("GET", `/channel/search?channel_type=${type}&prefix=${encodeURIComponent(prefix)}&limit=50`);
  $("found").hidden = false;
  $("found-rows").replaceChildren(
    ...found.map((c) => {
      const row = document.createElement("tr");
      row.dataset.channel = c.channel_id;
      const flags = ATTRIBUTES.filter((k) => c[k]).join(", ") || "–";
      const action = document.createElement("td");
      const open = document.createElement("button");
      open.type = "button";
      open.className = "plain";
      open.textContent = "Open";
      open.setAttribute("aria-label", `Open ${c.channel_id}`);
      open.addEventListener("click", () => {
        $("channel-id").value = c.channel_id;
        $("channel-type").value = String(c.channel_type);
        openChannel().catch(fail);
      });
      action.append(open);
      row.append(cell(c.channel_id), cell(flags), action);
      return row;
    }),
  );
  if (!found.length) $("found-rows").replaceChildren(Object.assign(document.createElement("tr"), { innerHTML: '<td colspan="3">no channel found</td>' }));
}

$("channel-search").addEventListener("submit", (event) => {
  event.preventDefault();
  search().catch(fail);
});

async function openChannel() {
  opened = { id: $("channel-id").value.trim(), type: Number($("channel-type").value) };
  $("channel").hidden = false;
  await Promise.all([loadAttributes(), loadHistory(), ...LISTS.map((l) => loadList(l))]);
}

// Attributes: read, edited as checkboxes, written whole (POST /channel/info sets all).
async function loadAttributes() {
  const info = await api("GET", `/channel/info?${channelQuery()}`);
  for (const key of ATTRIBUTES) $("attributes").elements[key].checked = Boolean(info[key]);
  $("attributes").dataset.saved = ATTRIBUTES.map((k) => info[k]).join("");
}

$("attributes").addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = channelOf();
  for (const key of ATTRIBUTES) body[key] = $("attributes").elements[key].checked ? 1 : 0;
  try {
    await api("POST", "/channel/info", body);
    setStatus(`${opened.id}: attributes saved`);
    await loadAttributes();
  } catch (e) {
    fail(e);
  }
});

// The subscriber, black- and whitelists: a page of 100 at a time, add and remove.
const LIST_PAGE = 100;
const LISTS = [
  { name: "subscribers", title: "Subscribers", add: "/channel/subscriber_add", remove: "/channel/subscriber_remove", field: "subscribers" },
  { name: "blacklist", title: "Blacklist", add: "/channel/blacklist_add", remove: "/channel/blacklist_remove", field: "uids" },
  { name: "whitelist", title: "Whitelist", add: "/channel/whitelist_add", remove: "/channel/whitelist_remove", field: "uids" },
];

for (const list of LISTS) {
  const box = document.querySelector(`.list[data-list="${list.name}"]`);
  const inputId = `add-${list.name}`;
  box.innerHTML = `<h3>${list.title} <span class="count"></span></h3>
    <form class="row"><label for="${inputId}">Add to ${list.title.toLowerCase()}</label>
    <input id="${inputId}" required placeholder="uid"><button type="submit">Add</button></form>
    <table><thead><tr><th scope="col">User</th><th scope="col">Added</th><th scope="col"><span class="visually-hidden">Action</span></th></tr></thead>
    <tbody></tbody></table>
    <button type="button" class="plain more" hidden>More</button>`;
  list.box = box;
  box.querySelector("form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const uid = box.querySelector("input").value.trim();
    try {
      await api("POST", list.add, { ...channelOf(), [list.field]: [uid] });
      box.querySelector("input").value = "";
      setStatus(`${uid} added to ${opened.id}'s ${list.title.toLowerCase()}`);
      await loadList(list);
    } catch (e) {
      fail(e);
    }
  });
  box.querySelector(".more").addEventListener("click", () => loadList(list, true).catch(fail));
}

function listRow(list, entry) {
  const row = document.createElement("tr");
  row.dataset.uid = entry.uid;
  const action = document.createElement("td");
  const remove = document.createElement("button");
  remove.type = "button";
  remove.textContent = "Remove";
  remove.setAttribute("aria-label", `Remove ${entry.uid} from ${list.title.toLowerCase()}`);
  remove.addEventListener("click", async () => {
    try {
      await api("POST", list.remove, { ...channelOf(), [list.field]: [entry.uid] });
      setStatus(`${entry.uid} removed from ${opened.id}'s ${list.title.toLowerCase()}`);
      await loadList(list);
    } catch (e) {
      fail(e);
    }
  });
  action.append(remove);
  row.append(cell(entry.uid), cell(new Date(entry.created_at * 1000).toLocaleString()), action);
  return row;
}

/** Reloads a list's first page, or with `more` appends the next. */
async function loadList(list, more = false) {
  // A person channel has no subscribers: its lists are the user's own.
  list.box.hidden = list.name === "subscribers" && opened.type === 1;
  if (list.box.hidden) return;
  const body = list.box.querySelector("tbody");
  const after = more ? (body.lastElementChild?.dataset.uid ?? "") : "";
  const page = await api("GET", `/channel/${list.name}?${channelQuery()}&limit=${LIST_PAGE}&after=${encodeURIComponent(after)}`);
  const rows = page.map((entry) => listRow(list, entry));
  if (more) body.append(...rows);
  else body.replaceChildren(...rows);
  list.box.querySelector(".more").hidden = page.length < LIST_PAGE;
  list.box.querySelector(".count").textContent = `(${body.children.length}${page.length < LIST_PAGE ? "" : "+"})`;
}

async function loadHistory() {
  const { id, type } = opened;
  const as = $("channel-as").value.trim();
  const [page, max] = await Promise.all([
    api("POST", "/channel/messagesync", {
      login_uid: as,
      channel_id: id,
      channel_type: type,
      start_message_seq: 0,
      end_message_seq: 0,
      pull_mode: 0,
      limit: 50,
    }),
    api("GET", `/channel/max_message_seq?${channelQuery()}`).catch(() => null),
  ]);
  // Newest first.
  const messages = (page.messages || []).sort((a, b) => b.message_seq - a.message_seq);
  const last = max?.message_seq ?? (messages.length ? messages[0].message_seq : 0);
  // What happened to them since: revoked, edited, read, reacted to.
  const extras = new Map();
  if (messages.length) {
    const found = await api("POST", "/message/extras", {
      login_uid: as,
      ...channelOf(),
      message_seqs: messages.map((m) => m.message_seq),
    });
    for (const e of found) extras.set(e.message_seq, e);
  }
  $("channel-info").textContent = `${id} (type ${type}): last seq ${last}, the newest ${messages.length} below`;
  $("history").replaceChildren(...messages.map((m) => historyItem(m, extras.get(m.message_seq))));
}

/** One message of the history, with what happened to it since and a Revoke button. */
function historyItem(m, extra) {
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
  if (extra) {
    item.dataset.version = String(extra.extra_version);
    const marks = [];
    if (extra.revoke) marks.push(`revoked by ${extra.revoker || "the app server"}`);
    if (extra.is_edit) marks.push(`edited ${new Date(extra.edited_at * 1000).toLocaleString()}`);
    if (extra.readed_count) marks.push(`read by ${extra.readed_count}`);
    for (const r of extra.reactions) marks.push(`${r.emoji} ${r.count}`);
    const state = document.createElement("div");
    state.className = "extra";
    state.textContent = marks.join(" · ");
    item.append(state);
    if (extra.revoke) item.classList.add("revoked");
    if (extra.is_edit) {
      const edited = document.createElement("pre");
      edited.className = "edited";
      const now = decodePayload(extra.content_edit);
      edited.textContent = `now: ${now.text}`;
      item.append(edited);
    }
  }
  if (!extra?.revoke) {
    const revoke = document.createElement("button");
    revoke.type = "button";
    revoke.className = "plain";
    revoke.textContent = "Revoke";
    revoke.setAttribute("aria-label", `Revoke message #${m.message_seq}`);
    revoke.addEventListener("click", async () => {
      try {
        // As the app server: no from_uid.
        await api("POST", "/message/revoke", { ...channelOf(), login_uid: $("channel-as").value.trim(), message_id: messageId });
        setStatus(`#${m.message_seq} revoked`);
        await loadHistory();
      } catch (e) {
        fail(e);
      }
    });
    item.append(revoke);
  }
  return item;
}

$("channel-open").addEventListener("submit", (event) => {
  event.preventDefault();
  openChannel().catch(fail);
});

$("channel-send").addEventListener("submit", async (event) => {
  event.preventDefault();
  const content = JSON.stringify({ type: 1, content: $("send-text").value });
  const payload = btoa(String.fromCharCode(...new TextEncoder().encode(content)));
  try {
    await api("POST", "/message/send", { from_uid: "", ...channelOf(), payload });
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
      const heartbeat = n.heartbeat_at
        ? `${new Date(n.heartbeat_at).toLocaleTimeString()} (${(n.heartbeat_age_ms / 1000).toFixed(1)} s ago)`
        : "–";
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
  chart("chart-latency", ["SENDACK p50", "SENDACK p99", "commit p99"], ["#1a7f37", "#0b5cad", "#8e24aa"]);
  chart("chart-cpu", ["CPU %", "RSS MiB"], ["#b35c00", "#0b5cad"], ["%", "MiB"]);
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
