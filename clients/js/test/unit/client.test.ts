import { afterEach, beforeEach, describe, test } from "node:test";
import assert from "node:assert/strict";
import {
  Emitter,
  Herald,
  HeraldError,
  backoffDelay,
  tokenExpiry,
  type HeraldOptions,
  type JoinedInfo,
  type StateChange,
} from "../../src/herald.js";
import { FakeSocket, reset, sleep, socket, waitFor } from "./fake-socket.js";

const clients: Herald<any, any>[] = [];

function client<E extends Record<string, unknown> = Record<string, unknown>>(
  opts: Partial<HeraldOptions> = {},
): Herald<E> {
  const c = new Herald<E>({
    url: "ws://edge.test/ws",
    token: "tok",
    WebSocket: FakeSocket,
    reconnect: { initialDelayMs: 10, maxDelayMs: 40, jitter: 0 },
    heartbeatMs: 0,
    onListenerError: () => {},
    ...opts,
  });
  clients.push(c);
  return c;
}

beforeEach(reset);
afterEach(() => {
  for (const c of clients.splice(0)) c.close();
});

function jwt(claims: Record<string, unknown>): string {
  const b64 = (o: unknown) => Buffer.from(JSON.stringify(o)).toString("base64url");
  return `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}.sig`;
}

describe("backoff", () => {
  test("grows by the factor from the initial delay and stops at the maximum", () => {
    const o = { initialDelayMs: 100, maxDelayMs: 1000, factor: 2, jitter: 0 };
    assert.deepEqual(
      [0, 1, 2, 3, 4, 5, 10].map((a) => backoffDelay(a, o)),
      [100, 200, 400, 800, 1000, 1000, 1000],
    );
  });

  test("jitter takes at most its fraction off, at random", () => {
    const o = { initialDelayMs: 1000, maxDelayMs: 1000, jitter: 0.5 };
    assert.equal(backoffDelay(0, o, () => 0), 1000);
    assert.equal(backoffDelay(0, o, () => 0.999999), 500);
    assert.equal(backoffDelay(0, o, () => 0.5), 750);
    const seen = new Set<number>();
    for (let i = 0; i < 200; i++) {
      const d = backoffDelay(3, { initialDelayMs: 100, maxDelayMs: 10_000 });
      assert.ok(d >= 400 && d <= 800, `delay ${d} out of [400, 800]`);
      seen.add(d);
    }
    assert.ok(seen.size > 20, "jitter spreads the delays");
  });

  test("defaults are sane", () => {
    assert.equal(backoffDelay(0, {}, () => 0), 500);
    assert.equal(backoffDelay(100, {}, () => 0), 15_000);
  });

  test("failed attempts are spaced by the backoff, and a welcome resets it", async () => {
    const c = client({ reconnect: { initialDelayMs: 20, factor: 2, maxDelayMs: 80, jitter: 0 } });
    const delays: number[] = [];
    c.on("$state", (s) => {
      if (s.state === "reconnecting") delays.push(s.retryInMs ?? -1);
    });
    for (let n = 1; n <= 4; n++) (await socket(n)).drop(1006);
    (await socket(5)).accept();
    (await socket(5)).drop(1012);
    await socket(6);
    assert.deepEqual(delays, [20, 40, 80, 80, 20]);
  });

  test("reconnect: false never retries; maxAttempts gives up", async () => {
    const c = client({ reconnect: false });
    (await socket(1)).drop(1006);
    await sleep(30);
    assert.equal(FakeSocket.all.length, 1);
    assert.equal(c.state, "closed");
    reset();
    const d = client({ reconnect: { initialDelayMs: 1, maxAttempts: 2, jitter: 0 } });
    for (let n = 1; n <= 3; n++) (await socket(n)).drop(1006);
    await sleep(30);
    assert.equal(FakeSocket.all.length, 3);
    assert.equal(d.state, "closed");
  });
});

describe("close codes", () => {
  for (const code of [4001, 4003, 1008]) {
    test(`no reconnect after ${code}`, async () => {
      const c = client();
      const states: StateChange[] = [];
      c.on("$state", (s) => states.push(s));
      const s = await socket(1);
      s.accept();
      s.receive({ type: "disconnect", code, reason: "no", reconnect: false });
      s.drop(code, "no");
      await sleep(50);
      assert.equal(FakeSocket.all.length, 1, "no second socket");
      assert.equal(c.state, "closed");
      assert.equal(states.at(-1)?.code, code);
    });
  }

  test("4001 without a disconnect frame (refused before welcome) stops too", async () => {
    const c = client();
    const s = await socket(1);
    s.open();
    s.drop(4001, "unauthorized");
    await sleep(50);
    assert.equal(FakeSocket.all.length, 1);
    assert.equal(c.state, "closed");
  });

  test("a disconnect frame saying reconnect:false is obeyed", async () => {
    const c = client();
    const s = await socket(1);
    s.accept();
    s.receive({ type: "disconnect", code: 4100, reason: "banned", reconnect: false });
    s.drop(4100, "banned");
    await sleep(50);
    assert.equal(FakeSocket.all.length, 1);
    assert.equal(c.state, "closed");
  });

  test("1012 (edge restarting) and 4008 (slow consumer) reconnect", async () => {
    client();
    const s1 = await socket(1);
    s1.accept();
    s1.receive({ type: "disconnect", code: 1012, reason: "restart", reconnect: true });
    s1.drop(1012);
    const s2 = await socket(2);
    s2.accept();
    s2.drop(4008);
    await socket(3);
  });
});

describe("tokens", () => {
  test("the token goes in the first frame, never in the URL", async () => {
    client({ token: "secret-token" });
    const s = await socket(1);
    s.open();
    assert.deepEqual(s.sent[0], { type: "auth", token: "secret-token" });
    assert.ok(!s.url.includes("secret-token"));
  });

  test("a provider is asked on every connect and again at once after 4002", async () => {
    let calls = 0;
    const c = client({ token: async () => `t${++calls}`, reconnect: { initialDelayMs: 5000 } });
    const s1 = await socket(1);
    s1.accept();
    assert.deepEqual(s1.sent[0], { type: "auth", token: "t1" });
    s1.receive({ type: "disconnect", code: 4002, reason: "token expired", reconnect: true });
    s1.drop(4002);
    const s2 = await socket(2); // no 5 s backoff
    s2.open();
    assert.deepEqual(s2.sent[0], { type: "auth", token: "t2" });
    assert.equal(c.state, "reconnecting");
  });

  test("a static token that expired is not retried", async () => {
    const c = client({ token: "fixed" });
    const s = await socket(1);
    s.accept();
    s.drop(4002, "token expired");
    await sleep(50);
    assert.equal(FakeSocket.all.length, 1);
    assert.equal(c.state, "closed");
  });

  test("before expiry the provider is called and the session refreshed in place", async () => {
    const exp = Math.floor(Date.now() / 1000) + 31;
    let n = 0;
    const tokens = [jwt({ sub: "a", exp }), jwt({ sub: "a", exp: exp + 3600 })];
    client({ token: () => tokens[Math.min(n++, 1)] as string, refreshBeforeExpiryMs: 30_950 });
    const s = await socket(1);
    s.accept();
    await waitFor(() => s.ofType("refresh").length === 1, 3000, "refresh frame");
    const f = s.ofType("refresh")[0] ?? {};
    assert.equal(f["token"], tokens[1]);
    s.receive({ type: "reply", id: f["id"] });
    assert.equal(FakeSocket.all.length, 1, "refreshed without reconnecting");
  });

  test("tokenExpiry reads exp from a JWT and ignores other strings", () => {
    assert.equal(tokenExpiry(jwt({ sub: "x", exp: 123 })), 123);
    assert.equal(tokenExpiry(jwt({ sub: "x" })), undefined);
    assert.equal(tokenExpiry("opaque"), undefined);
    assert.equal(tokenExpiry("a.!!!.c"), undefined);
  });
});

describe("queue", () => {
  test("emits made offline wait, go out in order after welcome, and resolve with the reply", async () => {
    const c = client<{}>({ autoConnect: false });
    const p1 = c.emit("message:send", { text: "one" });
    const p2 = c.emit("message:send", { text: "two" });
    assert.equal(c.queued, 2);
    c.connect();
    const s = await socket(1);
    s.open();
    assert.equal(s.ofType("emit").length, 0, "nothing before welcome");
    s.accept();
    const emits = s.ofType("emit");
    assert.deepEqual(
      emits.map((f) => (f["data"] as { text: string }).text),
      ["one", "two"],
    );
    s.receive({ type: "reply", id: emits[1]?.["id"], data: { n: 2 } });
    s.receive({ type: "reply", id: emits[0]?.["id"], data: { n: 1 } });
    assert.deepEqual(await p1, { n: 1 });
    assert.deepEqual(await p2, { n: 2 });
  });

  test("an edge error rejects with its code", async () => {
    const c = client();
    const s = await socket(1);
    s.accept();
    const p = c.emit("nobody", {});
    s.receive({ type: "error", id: s.last()["id"], code: "no_handler", message: "none" });
    await assert.rejects(p, (e: unknown) => e instanceof HeraldError && e.code === "no_handler");
  });

  test("a request times out (queue time included) and is not sent after", async () => {
    const c = client({ autoConnect: false });
    const p = c.emit("slow", {}, { timeoutMs: 20 });
    await assert.rejects(p, (e: unknown) => e instanceof HeraldError && e.code === "timeout");
    assert.equal(c.queued, 0);
    c.connect();
    const s = await socket(1);
    s.accept();
    assert.equal(s.ofType("emit").length, 0);
  });

  test("a sent emit rejects with `disconnected` on a drop; reads are sent again", async () => {
    const c = client();
    const s1 = await socket(1);
    s1.accept();
    const e = c.emit("x", 1);
    const h = c.history("channel:1", { limit: 5 });
    const pub = c.publish("channel:1", "typing", {});
    s1.drop(1006);
    await assert.rejects(e, (err: unknown) => err instanceof HeraldError && err.code === "disconnected");
    await assert.rejects(pub, (err: unknown) => err instanceof HeraldError && err.code === "disconnected");
    const s2 = await socket(2);
    s2.accept();
    const again = s2.ofType("history");
    assert.equal(again.length, 1);
    assert.equal(again[0]?.["limit"], 5);
    s2.receive({ type: "history", id: again[0]?.["id"], room: "channel:1", events: [{ type: "event", room: "channel:1", event: "m", seq: 3, data: 1 }] });
    assert.equal((await h)[0]?.seq, 3);
  });

  test("the queue is bounded", async () => {
    const c = client({ autoConnect: false, maxQueue: 2 });
    const a = c.emit("e", 1);
    const b = c.emit("e", 2);
    await assert.rejects(c.emit("e", 3), (e: unknown) => e instanceof HeraldError && e.code === "queue_full");
    c.close();
    await assert.rejects(a, (e: unknown) => e instanceof HeraldError && e.code === "closed");
    await assert.rejects(b, (e: unknown) => e instanceof HeraldError && e.code === "closed");
  });

  test("presence: members() asks the edge and returns its users", async () => {
    const c = client();
    const s = await socket(1);
    s.accept();
    const p = c.room("channel:1").members();
    const f = s.last();
    assert.deepEqual({ type: f["type"], room: f["room"] }, { type: "presence", room: "channel:1" });
    s.receive({ type: "presence", id: f["id"], room: "channel:1", users: [{ user: "bob", conns: 2 }] });
    assert.deepEqual(await p, [{ user: "bob", conns: 2 }]);
  });
});

describe("cursors", () => {
  test("a reconnect rejoins every room with its epoch and last seq, and surfaces recovered", async () => {
    const c = client();
    const s1 = await socket(1);
    s1.accept();
    const room = c.join("channel:1");
    const other = c.join("channel:2");
    const [j1, j2] = s1.ofType("join");
    assert.equal(j1?.["since"], undefined, "no cursor on a first join");
    s1.receive({ type: "joined", id: j1?.["id"], room: "channel:1", epoch: "E", seq: 5, recovered: false, missed: 0 });
    s1.receive({ type: "joined", id: j2?.["id"], room: "channel:2", epoch: "E", seq: 0, recovered: false, missed: 0 });
    s1.receive({ type: "event", room: "channel:1", event: "m", seq: 6, data: "a" });
    s1.receive({ type: "event", room: "channel:1", event: "m", seq: 9, data: "b" });
    s1.receive({ type: "event", room: "channel:1", event: "typing", data: "volatile" });
    assert.deepEqual(room.cursor, { epoch: "E", seq: 9 });
    assert.deepEqual(other.cursor, { epoch: "E", seq: 0 });
    s1.drop(1006);
    const s2 = await socket(2);
    const joined: JoinedInfo[] = [];
    room.on("$joined", (j) => joined.push(j));
    const got: unknown[] = [];
    room.on("m", (d, meta) => got.push([d, meta.seq, meta.replayed]));
    s2.accept();
    const rejoins = s2.ofType("join");
    assert.deepEqual(
      rejoins.map((f) => [f["room"], f["since"]]),
      [
        ["channel:1", { epoch: "E", seq: 9 }],
        ["channel:2", { epoch: "E", seq: 0 }],
      ],
    );
    const r1 = rejoins.find((f) => f["room"] === "channel:1");
    s2.receive({ type: "joined", id: r1?.["id"], room: "channel:1", epoch: "E", seq: 11, recovered: true, missed: 2 });
    // The cursor stays at 9 until the replayed events arrive.
    assert.deepEqual(room.cursor, { epoch: "E", seq: 9 });
    s2.receive({ type: "event", room: "channel:1", event: "m", seq: 10, data: "c" });
    s2.receive({ type: "event", room: "channel:1", event: "m", seq: 11, data: "d" });
    s2.receive({ type: "event", room: "channel:1", event: "m", seq: 12, data: "e" });
    assert.deepEqual(joined.map((j) => [j.recovered, j.missed, j.resumed]), [[true, 2, true]]);
    assert.deepEqual(got, [
      ["c", 10, true],
      ["d", 11, true],
      ["e", 12, false],
    ]);
    assert.deepEqual(room.cursor, { epoch: "E", seq: 12 });
  });

  test("a drop in the middle of a replay resumes from the last replayed event", async () => {
    const c = client();
    const s1 = await socket(1);
    s1.accept();
    const room = c.join("channel:1", { since: { epoch: "E", seq: 3 } });
    const j = s1.ofType("join")[0];
    assert.deepEqual(j?.["since"], { epoch: "E", seq: 3 });
    s1.receive({ type: "joined", id: j?.["id"], room: "channel:1", epoch: "E", seq: 8, recovered: true, missed: 5 });
    s1.receive({ type: "event", room: "channel:1", event: "m", seq: 4, data: 4 });
    s1.drop(1006);
    const s2 = await socket(2);
    s2.accept();
    assert.deepEqual(s2.ofType("join")[0]?.["since"], { epoch: "E", seq: 4 });
    assert.deepEqual(room.cursor, { epoch: "E", seq: 4 });
  });

  test("recovered:false (another epoch) moves the cursor to the new stream", async () => {
    const c = client();
    const s1 = await socket(1);
    s1.accept();
    const room = c.join("channel:1", { since: { epoch: "OLD", seq: 40 } });
    const info = room.join();
    const j = s1.ofType("join");
    s1.receive({ type: "joined", id: j[0]?.["id"], room: "channel:1", epoch: "NEW", seq: 2, recovered: false, missed: 0 });
    s1.receive({ type: "joined", id: j[1]?.["id"], room: "channel:1", epoch: "NEW", seq: 2, recovered: false, missed: 0 });
    assert.equal((await info).recovered, false);
    assert.deepEqual(room.cursor, { epoch: "NEW", seq: 2 });
  });

  test("the private room (joined by the edge) is left and rejoined with its cursor, skipping the edge's own join", async () => {
    const c = client();
    const notes: unknown[] = [];
    c.room("user:alice").on("note", (d) => notes.push(d));
    const s1 = await socket(1);
    s1.accept();
    s1.receive({ type: "joined", room: "user:alice", epoch: "E", seq: 0, recovered: false, missed: 0 });
    s1.receive({ type: "event", room: "user:alice", event: "note", seq: 7, data: "n7" });
    s1.drop(1006);
    const s2 = await socket(2);
    s2.accept();
    // The edge joins it again by itself, and may deliver a live event before our answer.
    s2.receive({ type: "joined", room: "user:alice", epoch: "E", seq: 9, recovered: false, missed: 0 });
    s2.receive({ type: "event", room: "user:alice", event: "note", seq: 10, data: "n10" });
    const sent = s2.sent.filter((f) => f["room"] === "user:alice").map((f) => [f["type"], f["since"]]);
    assert.deepEqual(sent, [
      ["leave", undefined],
      ["join", { epoch: "E", seq: 7 }],
    ]);
    const j = s2.ofType("join")[0];
    s2.receive({ type: "left", room: "user:alice" });
    s2.receive({ type: "joined", id: j?.["id"], room: "user:alice", epoch: "E", seq: 10, recovered: true, missed: 3 });
    for (const seq of [8, 9, 10]) s2.receive({ type: "event", room: "user:alice", event: "note", seq, data: `n${seq}` });
    assert.deepEqual(notes, ["n7", "n8", "n9", "n10"]);
  });

  test("a gap notice (joined without id, recovered:false) reaches $joined and resets the cursor", async () => {
    const c = client();
    const s = await socket(1);
    s.accept();
    const room = c.join("channel:1");
    s.receive({ type: "joined", id: s.last()["id"], room: "channel:1", epoch: "E", seq: 1, recovered: false, missed: 0 });
    const seen: JoinedInfo[] = [];
    c.on("$joined", (j) => seen.push(j));
    s.receive({ type: "joined", room: "channel:1", epoch: "E", seq: 50, recovered: false, missed: 0 });
    assert.equal(seen.length, 1);
    assert.equal(seen[0]?.recovered, false);
    assert.deepEqual(room.cursor, { epoch: "E", seq: 50 });
  });

  test("a refused join is not retried on reconnect", async () => {
    const c = client();
    const s1 = await socket(1);
    s1.accept();
    const p = c.room("channel:x").join();
    s1.receive({ type: "error", id: s1.last()["id"], code: "forbidden", message: "no" });
    await assert.rejects(p);
    s1.drop(1006);
    const s2 = await socket(2);
    s2.accept();
    assert.equal(s2.ofType("join").length, 0);
  });

  test("a left room is not rejoined", async () => {
    const c = client();
    const s1 = await socket(1);
    s1.accept();
    const room = c.join("channel:1");
    s1.receive({ type: "joined", id: s1.last()["id"], room: "channel:1", epoch: "E", seq: 1, recovered: false, missed: 0 });
    const left = room.leave();
    s1.receive({ type: "left", id: s1.last()["id"], room: "channel:1" });
    await left;
    s1.drop(1006);
    const s2 = await socket(2);
    s2.accept();
    assert.equal(s2.ofType("join").length, 0);
  });
});

describe("listeners", () => {
  test("a throwing listener never stops the others, and is reported", async () => {
    const errors: [unknown, string][] = [];
    const c = client({ onListenerError: (e, name) => errors.push([e, name]) });
    const s = await socket(1);
    s.accept();
    const room = c.join("channel:1");
    s.receive({ type: "joined", id: s.last()["id"], room: "channel:1", epoch: "E", seq: 0, recovered: false, missed: 0 });
    const got: string[] = [];
    c.on("m", () => {
      throw new Error("boom");
    });
    c.on("m", () => got.push("client"));
    room.on("m", () => {
      throw new Error("room boom");
    });
    room.on("m", () => got.push("room"));
    room.on("*", () => got.push("room*"));
    c.on("*", () => got.push("client*"));
    s.receive({ type: "event", room: "channel:1", event: "m", seq: 1, data: {} });
    s.receive({ type: "event", room: "channel:1", event: "m", seq: 2, data: {} });
    assert.deepEqual(got, ["room", "room*", "client", "client*", "room", "room*", "client", "client*"]);
    assert.equal(errors.length, 4);
    assert.equal(errors[0]?.[1], "m");
    // The client itself keeps working.
    assert.deepEqual(room.cursor, { epoch: "E", seq: 2 });
  });

  test("room listeners only hear their room; once fires once; off removes", async () => {
    const c = client();
    const s = await socket(1);
    s.accept();
    const a = c.join("channel:a");
    const b = c.join("channel:b");
    const got: string[] = [];
    a.on("m", (d) => got.push(`a:${String(d)}`));
    b.once("m", (d) => got.push(`b-once:${String(d)}`));
    const fn = (d: unknown) => got.push(`any:${String(d)}`);
    c.on("m", fn);
    const un = c.on("other", () => got.push("other"));
    s.receive({ type: "event", room: "channel:a", event: "m", seq: 1, data: 1 });
    s.receive({ type: "event", room: "channel:b", event: "m", seq: 2, data: 2 });
    s.receive({ type: "event", room: "channel:b", event: "m", seq: 3, data: 3 });
    c.off("m", fn);
    un();
    s.receive({ type: "event", room: "channel:a", event: "m", seq: 4, data: 4 });
    s.receive({ type: "event", room: "channel:a", event: "other", seq: 5, data: 5 });
    assert.deepEqual(got, ["a:1", "any:1", "b-once:2", "any:2", "any:3", "a:4"]);
  });

  test("a listener added during a dispatch waits for the next one", () => {
    const e = new Emitter(() => {});
    const got: number[] = [];
    e.on("x", () => {
      got.push(1);
      e.on("x", () => got.push(2));
    });
    e.emit("x", []);
    assert.deepEqual(got, [1]);
  });

  test("presence events reach the room and the client", async () => {
    const c = client();
    const s = await socket(1);
    s.accept();
    const room = c.join("channel:1");
    const got: string[] = [];
    room.on("$presence_join", (p) => got.push(`room join ${p.user}`));
    c.on("$presence_leave", (p) => got.push(`leave ${p.room} ${p.user}`));
    s.receive({ type: "presence_join", room: "channel:1", user: "bob", info: { name: "Bob" } });
    s.receive({ type: "presence_join", room: "channel:2", user: "carol" });
    s.receive({ type: "presence_leave", room: "channel:1", user: "bob" });
    assert.deepEqual(got, ["room join bob", "leave channel:1 bob"]);
  });

  test("connection states an app can show", async () => {
    const c = client();
    const states: string[] = [];
    c.on("$state", (s) => states.push(s.state));
    const s1 = await socket(1);
    s1.accept();
    s1.drop(1006);
    const s2 = await socket(2);
    s2.accept();
    c.close();
    assert.deepEqual(states, ["connected", "reconnecting", "connected", "idle"]);
  });
});

describe("heartbeat", () => {
  test("an unanswered ping ends the connection and reconnects", async () => {
    client({ heartbeatMs: 10, heartbeatTimeoutMs: 20 });
    const s1 = await socket(1);
    s1.accept();
    await waitFor(() => s1.ofType("ping").length > 0, 1000, "ping");
    await socket(2);
    assert.equal(s1.closedByClient?.code, 4000);
  });

  test("an answered ping keeps it", async () => {
    client({ heartbeatMs: 10, heartbeatTimeoutMs: 30 });
    const s1 = await socket(1);
    s1.accept();
    const end = Date.now() + 150;
    while (Date.now() < end) {
      if (s1.ofType("ping").length > s1.sent.filter((f) => f["answered"]).length) {
        s1.receive({ type: "pong" });
        const last = s1.ofType("ping").at(-1);
        if (last) last["answered"] = true;
      }
      await sleep(2);
    }
    assert.equal(FakeSocket.all.length, 1);
  });
});
