// One official WuKongIM JS SDK client per process (the SDK is a singleton), driven by
// the Rust conformance tests: commands arrive as JSON lines on stdin, and everything the
// SDK's listeners report leaves as JSON lines on stdout (the SDK's own logging goes to
// stderr). Usage: node dist/client.cjs <ws-url> <uid> <token> [heartbeat-ms]
import WebSocket from "ws";
import WKSDK from "wukongimjssdk";
import readline from "node:readline";

globalThis.WebSocket = WebSocket;
// The SDK logs with console.log; keep stdout for events.
console.log = (...args) => process.stderr.write(args.map(String).join(" ") + "\n");

const [addr, uid, token, heartbeatMs] = process.argv.slice(2);
const emit = (event) => process.stdout.write(JSON.stringify(event) + "\n");
const sdk = WKSDK.shared();
sdk.config.addr = addr;
sdk.config.uid = uid;
sdk.config.token = token;
if (heartbeatMs) sdk.config.heartbeatInterval = Number(heartbeatMs);
let connects = 0;
sdk.connectManager.addConnectStatusListener((status, reasonCode) => {
  if (status === 1) connects += 1;
  emit({ event: "status", status, reasonCode: reasonCode ?? null, connects });
});
sdk.chatManager.addMessageListener((m) =>
  emit({
    event: "message",
    from: m.fromUID,
    channel: m.channel.channelID,
    channelType: m.channel.channelType,
    seq: m.messageSeq,
    messageId: String(m.messageID),
    text: m.content?.text ?? null,
  }),
);
// Command messages (content type 99) go to their own listeners, not the message ones.
sdk.chatManager.addCMDListener((m) =>
  emit({
    event: "cmd",
    channel: m.channel.channelID,
    channelType: m.channel.channelType,
    cmd: m.content?.cmd ?? null,
    param: m.content?.param ?? null,
  }),
);
sdk.chatManager.addMessageStatusListener((ack) =>
  emit({ event: "sendack", clientSeq: ack.clientSeq, reasonCode: ack.reasonCode, seq: ack.messageSeq }),
);

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const command = JSON.parse(line);
  switch (command.op) {
    case "connect":
      sdk.connect();
      break;
    case "send":
      sdk.chatManager.send(sdk.newMessageText(command.text), sdk.newChannel(command.to, command.channelType));
      break;
    case "disconnect":
      sdk.disconnect();
      emit({ event: "disconnected" });
      break;
    case "exit":
      process.exit(0);
  }
});
emit({ event: "ready" });
