// End to end: the demo page in headless Chromium against a real `herald dev`
// (and a real nats-server), nothing mocked.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { statSync } from "node:fs";
import { join } from "node:path";
import type { Browser, Page } from "playwright-core";
import {
  HeraldDev,
  Nats,
  artifacts,
  expectMessages,
  launchBrowser,
  openDemo,
  send,
  shownMessages,
  sleep,
  waitState,
} from "./harness.js";

let nats: Nats;
let herald: HeraldDev;
let browser: Browser;
const pages: Page[] = [];

before(async () => {
  nats = await Nats.start();
  herald = await HeraldDev.start(nats);
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await herald?.stop();
  await nats?.stop();
});

const uniqueRoom = (what: string) => `channel:${what}-${Date.now().toString(36)}`;

async function open(user: string, room: string): Promise<Page> {
  const page = await openDemo(browser, `${herald.base}/?user=${user}&room=${encodeURIComponent(room)}`);
  pages.push(page);
  await waitState(page, "connected");
  // Record what the client reports about each (re)join, to check `recovered`.
  await page.evaluate(() => {
    const w = window as unknown as { herald: { on: (n: string, f: (j: unknown) => void) => void }; joins: unknown[] };
    w.joins = [];
    w.herald.on("$joined", (j) => w.joins.push(j));
  });
  return page;
}

interface Joined {
  room: string;
  recovered: boolean;
  resumed: boolean;
  missed: number;
}
const joins = (page: Page): Promise<Joined[]> => page.evaluate(() => (window as unknown as { joins: Joined[] }).joins);

describe("demo page", { timeout: 180_000 }, () => {
  test("two users chat; the edge restarts twice mid-conversation; every missed message shows once, in order", async () => {
    const room = uniqueRoom("restart");
    const alice = await open("alice", room);
    const bob = await open("bob", room);

    await send(alice, "hi bob");
    await expectMessages(bob, ["hi bob"]);
    await send(bob, "hi alice");
    const expected = ["hi bob", "hi alice"];
    await expectMessages(alice, expected);
    await expectMessages(bob, expected);

    // 1. A graceful restart (SIGTERM: the edge drains with 1012).
    await herald.stop("SIGTERM");
    await waitState(alice, "reconnecting");
    await waitState(bob, "reconnecting");
    // While the edge is away: a producer keeps publishing, alice keeps typing
    // (her message waits in the client's queue), and alice gets a notification.
    for (const n of [1, 2, 3]) await herald.publish(room, "message:new", { from: "ops", text: `while down ${n}` });
    await send(alice, "queued while offline");
    await herald.publish("user:alice", "notice", { text: "you have a parcel" });
    await herald.start();
    expected.push("while down 1", "while down 2", "while down 3", "queued while offline");
    await expectMessages(alice, expected);
    await expectMessages(bob, expected);
    for (const page of [alice, bob]) {
      const resumed = (await joins(page)).filter((j) => j.room === room && j.resumed);
      assert.ok(resumed.length >= 1, "the room was rejoined");
      assert.ok(resumed.every((j) => j.recovered), `recovered on every rejoin: ${JSON.stringify(resumed)}`);
    }
    // The private room was resumed too: the notification shows, once.
    await alice.waitForSelector("#notifications li:has-text('you have a parcel')");
    assert.equal(await alice.locator("#notifications li", { hasText: "you have a parcel" }).count(), 1);

    // 2. A crash (SIGKILL: no disconnect frame, the socket just dies).
    await send(bob, "before the crash");
    expected.push("before the crash");
    await expectMessages(alice, expected);
    await herald.stop("SIGKILL");
    await waitState(alice, "reconnecting");
    await herald.publish(room, "message:new", { from: "ops", text: "after the crash" });
    await send(bob, "bob, offline");
    await herald.start();
    expected.push("after the crash", "bob, offline");
    await expectMessages(alice, expected);
    await expectMessages(bob, expected);
    // Still live after all that, and nothing was shown twice in the meantime.
    await send(alice, "all good?");
    expected.push("all good?");
    await expectMessages(bob, expected);
    await sleep(500);
    assert.deepEqual(await shownMessages(alice), expected);
    assert.equal(await alice.locator("#outbox li").count(), 0, "no message left pending");
  });

  test("a mention reaches the other user's notifications; screenshot of the demo", async () => {
    const room = uniqueRoom("screenshot");
    const alice = await open("alice", room);
    const bob = await open("bob", room);
    // Each waits for the other's message: sends from two users at once have no order.
    await send(alice, "Morning! The new build is out");
    await expectMessages(bob, ["Morning! The new build is out"]);
    await send(bob, "@alice nice, the resume after restarts works great");
    await expectMessages(alice, ["Morning! The new build is out", "@alice nice, the resume after restarts works great"]);
    // One user's quick messages are stored in the order typed.
    await send(alice, "Herald replays everything we missed, in order");
    await send(alice, "and nothing twice");
    await expectMessages(alice, [
      "Morning! The new build is out",
      "@alice nice, the resume after restarts works great",
      "Herald replays everything we missed, in order",
      "and nothing twice",
    ]);
    await alice.waitForSelector("#notifications li.mention-note:has-text('bob mentioned you')");
    // Typing signals are volatile events (publish), sent at most every 2 s.
    await sleep(2100);
    await bob.fill("#text", "typing");
    await alice.waitForSelector("#typing:has-text('bob is typing')", { timeout: 5000 });
    const file = join(artifacts, "demo.png");
    await alice.screenshot({ path: file });
    assert.ok(statSync(file).size > 20_000, "the screenshot has content");
  });

  test("presence: two users see each other in the presence list", async () => {
    const room = uniqueRoom("presence");
    const alice = await open("alice", room);
    const bob = await open("bob", room);
    await alice.waitForSelector('#presence li[data-user="bob"]', { timeout: 10_000 });
    await bob.waitForSelector('#presence li[data-user="alice"]', { timeout: 10_000 });
    // bob leaves: alice sees it.
    await bob.context().close();
    await alice.waitForSelector('#presence li[data-user="bob"]', { state: "detached", timeout: 15_000 });
  });

  test("an invalid token (4001) is not retried", async () => {
    const ctx = await browser.newContext();
    const page = await ctx.newPage();
    let sockets = 0;
    page.on("websocket", () => sockets++);
    await page.goto(`${herald.base}/?token=not-a-valid-token`);
    await waitState(page, "closed", 15_000);
    await sleep(3000);
    assert.equal(sockets, 1, "one attempt, no retry");
    assert.equal(await page.evaluate(() => (window as unknown as { herald: { state: string } }).herald.state), "closed");
    assert.match((await page.textContent("#banner")) ?? "", /4001|unauthorized/i);
    await ctx.close();
  });
});
