// The official WuKongIM JS SDK in a browser page: one SDK per page. The runner
// (browser.mjs) calls window.hongyan.* and reads window.hongyan.events; the page also
// shows what happened, for the screenshot.
import WKSDK from "wukongimjssdk";

const events = [];
const log = document.getElementById("log");
const record = (event) => {
  events.push(event);
  const line = document.createElement("div");
  line.className = event.event;
  line.textContent =
    event.event === "message" ? `${event.from} → ${event.channel}: ${event.text}` : JSON.stringify(event);
  log.appendChild(line);
};

window.hongyan = {
  events,
  start(addr, uid, token, heartbeatMs) {
    document.getElementById("who").textContent = uid;
    const sdk = WKSDK.shared();
    sdk.config.addr = addr;
    sdk.config.uid = uid;
    sdk.config.token = token;
    if (heartbeatMs) sdk.config.heartbeatInterval = heartbeatMs;
    sdk.connectManager.addConnectStatusListener((status, reasonCode) =>
      record({ event: "status", status, reasonCode: reasonCode ?? null }),
    );
    sdk.chatManager.addMessageListener((m) =>
      record({
        event: "message",
        from: m.fromUID,
        channel: m.channel.channelID,
        channelType: m.channel.channelType,
        seq: m.messageSeq,
        text: m.content?.text ?? null,
      }),
    );
    sdk.chatManager.addMessageStatusListener((ack) =>
      record({ event: "sendack", clientSeq: ack.clientSeq, reasonCode: ack.reasonCode, seq: ack.messageSeq }),
    );
    sdk.connect();
  },
  send(to, channelType, text) {
    const sdk = WKSDK.shared();
    sdk.chatManager.send(sdk.newMessageText(text), sdk.newChannel(to, channelType));
  },
};
