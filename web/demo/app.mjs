// The demo chat: sign in with any user id, chat one-to-one or in groups, react to
// messages and revoke one's own. The page gets a token from the demo's own endpoint,
// connects with the official WuKongIM JS SDK over WebSocket, and reads conversations,
// history and what happened to messages since (their extras) through the demo's window
// onto the server's HTTP API (the same handlers the app server calls). The server tells
// the SDK of a change by a command message (syncMessageExtra); the page then reads the
// open conversation's extras again.
import WKSDK from "wukongimjssdk";

const PERSON = 1;
const GROUP = 2;
// ConnectStatus in the SDK.
const DISCONNECTED = 0;
const CONNECTED = 1;
const CONNECTING = 2;
const CONNECT_FAILED = 3;
const KICKED = 4;

const $ = (id) => document.getElementById(id);
const me = { uid: "", token: "" };
/** key ("type:id") → {id, type, unread, last, timestamp} */
const conversations = new Map();
let open = null; // the open conversation's key
/** clientSeq → the tick element of a message waiting for its SENDACK */
const waiting = new Map();
/** SENDACKs that came before `send` resolved: clientSeq → the SENDACK */
const early = new Map();

const keyOf = (id, type) => `${type}:${id}`;

function decodePayload(b64) {
  try {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const content = JSON.parse(new TextDecoder().decode(bytes));
    return typeof content.content === "string" ? content.content : `[message type ${content.type}]`;
  } catch {
    return "[binary message]";
  }
}

async function signIn(uid) {
  const res = await fetch("/chatdemo/login", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ uid }),
  });
  const body = await res.json();
  if (!res.ok) throw new Error(body.msg || `sign-in failed (${res.status})`);
  me.uid = body.uid;
  me.token = body.token;
  return body;
}

/** POSTs to the server's API through the demo, signing in again if the demo forgot us. */
async function api(path, body, again = true) {
  const res = await fetch(`/chatdemo/api/${path}`, {
    method: "POST",
    headers: { "content-type": "application/json", "x-demo-uid": me.uid, "x-demo-token": me.token },
    body: JSON.stringify(body),
  });
  if (res.status === 401 && again) {
    await signIn(me.uid);
    WKSDK.shared().config.token = me.token;
    return api(path, body, false);
  }
  const answer = await res.json();
  if (!res.ok) throw new Error(answer.msg || `${path} failed (${res.status})`);
  return answer;
}

function setStatus(text, connected) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("connected", connected);
}

function remember(id, type) {
  const key = keyOf(id, type);
  if (!conversations.has(key)) conversations.set(key, { id, type, unread: 0, last: "", timestamp: 0 });
  return conversations.get(key);
}

function renderConversations() {
  const list = $("conversations");
  const sorted = [...conversations.entries()].sort((a, b) => b[1].timestamp - a[1].timestamp);
  list.replaceChildren(
    ...sorted.map(([key, c]) => {
      const item = document.createElement("li");
      item.dataset.key = key;
      const button = document.createElement("button");
      button.type = "button";
      button.setAttribute("aria-current", String(key === open));
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = c.id;
      name.title = c.last;
      const kind = document.createElement("span");
      kind.className = "kind";
      kind.textContent = c.type === GROUP ? "group" : "";
      const unread = document.createElement("span");
      unread.className = "unread";
      unread.dataset.count = String(c.unread);
      unread.textContent = String(c.unread);
      unread.setAttribute("aria-label", `${c.unread} unread`);
      button.append(name, kind, unread);
      button.addEventListener("click", () => openConversation(c.id, c.type));
      item.append(button);
      return item;
    }),
  );
}

// One reaction, a heart: drawn by the fonts every system has (emoji fonts are not everywhere).
const REACTION = "♥";

function appendMessage({ from, text, seq, id }, tick) {
  const item = document.createElement("li");
  item.className = from === me.uid ? "mine" : "";
  if (seq) item.dataset.seq = String(seq);
  if (id) item.dataset.id = id;
  const who = document.createElement("div");
  who.className = "from";
  who.textContent = from;
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  item.append(who, body);
  if (tick) item.append(tick);
  const actions = document.createElement("div");
  actions.className = "actions";
  actions.hidden = !id;
  const react = document.createElement("button");
  react.type = "button";
  react.className = "react";
  react.textContent = REACTION;
  react.setAttribute("aria-pressed", "false");
  react.setAttribute("aria-label", `React ${REACTION}`);
  react.addEventListener("click", () => toggleReaction(item).catch(showError));
  actions.append(react);
  if (from === me.uid) {
    const revoke = document.createElement("button");
    revoke.type = "button";
    revoke.className = "revoke";
    revoke.textContent = "Revoke";
    revoke.addEventListener("click", () => revokeMessage(item).catch(showError));
    actions.append(revoke);
  }
  item.append(actions);
  const list = $("messages");
  list.append(item);
  list.scrollTop = list.scrollHeight;
}

/** The open conversation as the API names it. */
function openChannel() {
  const c = conversations.get(open);
  return { channel_id: c.id, channel_type: c.type };
}

async function toggleReaction(item) {
  const mine = item.querySelector(".react").getAttribute("aria-pressed") === "true";
  const extra = await api("message/reaction", {
    ...openChannel(),
    message_id: item.dataset.id,
    emoji: REACTION,
    action: mine ? "remove" : "add",
  });
  showExtra(item, { ...extra, my_reactions: mine ? [] : [REACTION] });
}

async function revokeMessage(item) {
  const extra = await api("message/revoke", { ...openChannel(), message_id: item.dataset.id });
  showExtra(item, extra);
}

/** Shows what happened to a message: revoked, reactions (and whether mine is one). */
function showExtra(item, extra) {
  if (extra.revoke) {
    item.classList.add("revoked");
    item.querySelector(".text").textContent = extra.revoker === item.querySelector(".from").textContent
      ? "revoked by its sender"
      : "revoked";
    item.querySelector(".actions").hidden = true;
  }
  const count = extra.reactions?.find((r) => r.emoji === REACTION)?.count ?? 0;
  const react = item.querySelector(".react");
  react.textContent = count ? `${REACTION} ${count}` : REACTION;
  react.dataset.count = String(count);
  if (extra.my_reactions) react.setAttribute("aria-pressed", String(extra.my_reactions.includes(REACTION)));
}

/** Reads the extras of the open conversation's messages on the page and shows them. */
async function refreshExtras() {
  if (!open) return;
  const key = open;
  const items = [...$("messages").querySelectorAll("li[data-seq]")];
  if (!items.length) return;
  const extras = await api("message/extras", {
    ...openChannel(),
    message_seqs: items.map((li) => Number(li.dataset.seq)),
  });
  if (open !== key) return;
  for (const extra of extras) {
    const item = $("messages").querySelector(`li[data-seq="${extra.message_seq}"]`);
    if (item) showExtra(item, extra);
  }
  // How far this page has read the conversation's changes.
  const newest = Math.max(0, ...extras.map((e) => e.extra_version));
  $("messages").dataset.extraVersion = String(newest);
}

async function markRead(c, seq) {
  c.unread = 0;
  renderConversations();
  // Nothing stored yet (a new chat or group): there is no conversation to mark.
  if (seq > 0) {
    await api("conversations/clearUnread", { uid: me.uid, channel_id: c.id, channel_type: c.type, message_seq: seq });
  }
}

async function openConversation(id, type) {
  const c = remember(id, type);
  open = keyOf(id, type);
  $("chat-title").textContent = type === GROUP ? `Group ${id}` : `Chat with ${id}`;
  $("text").disabled = false;
  $("composer").querySelector("button").disabled = false;
  renderConversations();
  const page = await api("channel/messagesync", {
    login_uid: me.uid,
    channel_id: id,
    channel_type: type,
    start_message_seq: 0,
    end_message_seq: 0,
    pull_mode: 0,
    limit: 50,
  });
  if (open !== keyOf(id, type)) return;
  $("messages").replaceChildren();
  const messages = (page.messages || []).sort((a, b) => a.message_seq - b.message_seq);
  for (const m of messages) {
    const id = m.message_idstr ?? String(m.message_id);
    appendMessage({ from: m.from_uid, text: decodePayload(m.payload), seq: m.message_seq, id }, null);
  }
  const last = messages.length ? messages[messages.length - 1].message_seq : 0;
  await refreshExtras();
  await markRead(c, last);
  $("text").focus();
}

async function refreshConversations() {
  const list = await api("conversation/sync", { uid: me.uid, version: 0, msg_count: 1 });
  for (const item of list) {
    const c = remember(item.channel_id, item.channel_type);
    c.unread = keyOf(item.channel_id, item.channel_type) === open ? 0 : item.unread;
    c.timestamp = item.timestamp;
    if (item.recents?.length) c.last = decodePayload(item.recents[0].payload);
  }
  renderConversations();
}

function onMessage(m) {
  // The SDK echoes what this page sends (not stored yet: no seq); `send` shows it.
  if (m.fromUID === me.uid && !m.messageSeq) return;
  const id = m.channel.channelID;
  const type = m.channel.channelType;
  const c = remember(id, type);
  const text = m.content?.text ?? `[message type ${m.contentType}]`;
  c.last = text;
  c.timestamp = m.timestamp || Math.floor(Date.now() / 1000);
  if (keyOf(id, type) === open) {
    appendMessage({ from: m.fromUID, text, seq: m.messageSeq, id: String(m.messageID) }, null);
    markRead(c, m.messageSeq).catch(showError);
  } else {
    c.unread += 1;
    renderConversations();
  }
}

function settle(tick, { reasonCode, messageID, messageSeq }) {
  const ok = reasonCode === 1;
  const item = tick.parentElement;
  if (ok && item) {
    // Stored: now it can be reacted to and revoked.
    item.dataset.seq = String(messageSeq);
    item.dataset.id = String(messageID);
    item.querySelector(".actions").hidden = false;
  }
  tick.dataset.state = ok ? "acked" : "failed";
  tick.textContent = ok ? "✓" : `✗ ${reasonCode}`;
  tick.setAttribute("aria-label", ok ? "delivered to the server" : `refused (${reasonCode})`);
}

async function send(text) {
  const c = conversations.get(open);
  const sdk = WKSDK.shared();
  const tick = document.createElement("span");
  tick.className = "tick";
  tick.dataset.state = "sending";
  tick.textContent = "…";
  tick.setAttribute("aria-label", "sending");
  appendMessage({ from: me.uid, text, seq: 0 }, tick);
  c.last = text;
  c.timestamp = Math.floor(Date.now() / 1000);
  renderConversations();
  const message = await sdk.chatManager.send(sdk.newMessageText(text), sdk.newChannel(c.id, c.type));
  if (early.has(message.clientSeq)) {
    settle(tick, early.get(message.clientSeq));
    early.delete(message.clientSeq);
  } else {
    waiting.set(message.clientSeq, tick);
  }
}

function showError(e) {
  setStatus(e.message || String(e), false);
}

function start() {
  const sdk = WKSDK.shared();
  sdk.config.addr = me.wsAddr;
  sdk.config.uid = me.uid;
  sdk.config.token = me.token;
  sdk.connectManager.addConnectStatusListener(async (status, reasonCode) => {
    if (status === CONNECTED) {
      setStatus("connected", true);
      $("status").dataset.connects = String(Number($("status").dataset.connects || 0) + 1);
      // Caught up after every (re)connection: what came while away is in the history.
      try {
        await refreshConversations();
        if (open) {
          const c = conversations.get(open);
          await openConversation(c.id, c.type);
        }
      } catch (e) {
        showError(e);
      }
    } else if (status === CONNECTING) {
      setStatus("connecting…", false);
    } else if (status === DISCONNECTED) {
      setStatus("reconnecting…", false);
    } else if (status === KICKED) {
      setStatus("signed in elsewhere", false);
    } else if (status === CONNECT_FAILED) {
      // The token may be gone (the server's data was reset): get a new one and retry.
      setStatus(`login refused (${reasonCode}), retrying…`, false);
      setTimeout(async () => {
        try {
          await signIn(me.uid);
          sdk.config.token = me.token;
          sdk.connect();
        } catch (e) {
          showError(e);
        }
      }, 2000);
    }
  });
  sdk.chatManager.addMessageListener(onMessage);
  sdk.chatManager.addMessageStatusListener((ack) => {
    const tick = waiting.get(ack.clientSeq);
    if (tick) {
      waiting.delete(ack.clientSeq);
      settle(tick, ack);
    } else {
      early.set(ack.clientSeq, ack);
    }
  });
  // A message of a conversation changed (revoked, edited, reacted to): read again.
  sdk.chatManager.addCMDListener((m) => {
    if (m.content?.cmd !== "syncMessageExtra") return;
    const { channel_id: id, channel_type: type } = m.content.param ?? {};
    if (keyOf(id, type) === open) refreshExtras().catch(showError);
  });
  sdk.connect();
}

$("signin-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("signin-error").textContent = "";
  try {
    const session = await signIn($("uid").value.trim());
    me.wsAddr = session.ws_addr;
    $("me").textContent = me.uid;
    document.title = `${me.uid} · Hongyan demo chat`;
    $("signin").hidden = true;
    $("app").hidden = false;
    start();
    $("peer").focus();
  } catch (e) {
    $("signin-error").textContent = e.message;
  }
});

$("new-chat").addEventListener("submit", (event) => {
  event.preventDefault();
  const peer = $("peer").value.trim();
  if (!peer || peer === me.uid) return;
  $("peer").value = "";
  openConversation(peer, PERSON).catch(showError);
});

$("new-group").addEventListener("submit", async (event) => {
  event.preventDefault();
  const id = $("group-id").value.trim();
  const members = $("group-members")
    .value.split(",")
    .map((m) => m.trim())
    .filter(Boolean);
  try {
    await api("channel", { channel_id: id, channel_type: GROUP, subscribers: [me.uid, ...members] });
    $("group-id").value = "";
    $("group-members").value = "";
    await openConversation(id, GROUP);
  } catch (e) {
    showError(e);
  }
});

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("text").value.trim();
  if (!text || !open) return;
  $("text").value = "";
  send(text).catch(showError);
});
