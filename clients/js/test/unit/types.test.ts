// The typed event map is checked by the compiler: each line marked with a
// ts-expect-error directive must fail to compile, or `tsc -p tsconfig.test.json` fails.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Herald } from "../../src/herald.js";
import { FakeSocket, reset, socket } from "./fake-socket.js";

type Events = { "message:new": { from: string; text: string }; typing: { user: string } };
type Rpcs = { "message:send": { request: { room: string; text: string }; reply: { seq: number } } };

test("typed events, publish and emit", async () => {
  reset();
  const herald = new Herald<Events, Rpcs>({ url: "ws://x/ws", token: "t", WebSocket: FakeSocket, heartbeatMs: 0 });
  const room = herald.join("channel:1");
  const texts: string[] = [];
  room.on("message:new", (m, meta) => texts.push(`${m.from}: ${m.text} @${meta.seq ?? "-"}`));
  herald.on("$state", (s) => void s.state.toUpperCase());
  // @ts-expect-error: not an event of the map
  room.on("message:gone", () => {});
  // @ts-expect-error: `text` is a string
  room.on("message:new", (m: { text: number }) => void m);
  // @ts-expect-error: wrong payload
  void room.publish("typing", { who: "x" }).catch(() => {});
  // @ts-expect-error: wrong request
  void herald.emit("message:send", { room: "channel:1" }).catch(() => {});
  const reply: Promise<{ seq: number }> = herald.emit("message:send", { room: "channel:1", text: "hi" });
  const s = await socket(1);
  s.accept();
  s.receive({ type: "event", room: "channel:1", event: "message:new", seq: 4, data: { from: "bob", text: "yo" } });
  const id = s.ofType("emit").find((f) => (f["data"] as { text?: string }).text === "hi")?.["id"];
  s.receive({ type: "reply", id, data: { seq: 5 } });
  assert.equal((await reply).seq, 5);
  assert.deepEqual(texts, ["bob: yo @4"]);
  herald.close();
});
