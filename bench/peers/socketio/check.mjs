// Proves the wire contract in README.md with raw WebSocket frames (the `ws` package,
// not socket.io-client), as the Rust bench client speaks it:
//   1. single node, no Redis: two subscribers in r1, one in r2, a publisher;
//   2. Redis adapter: redis-server on a free port, two server.js nodes, one r1
//      subscriber per node, an r2 subscriber on node 2, a publisher on node 1.
// Each r1 subscriber must get the payload exactly once, r2 subscribers never.
// Run with `npm test` (needs redis-server on PATH: scripts/bench-peers-setup.sh).
import { spawn } from "node:child_process";
import { createServer } from "node:net";
import { fileURLToPath } from "node:url";
import { dirname, join } from "node:path";
import WebSocket from "ws";

const here = dirname(fileURLToPath(import.meta.url));
const children = new Set();
const sockets = new Set();

function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timeout after ${ms} ms: ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

// Spawns a child and resolves once a stdout/stderr line matches `ready`.
function start(name, cmd, args, env, ready) {
  const child = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  children.add(child);
  child.on("exit", () => children.delete(child));
  let out = "";
  const seen = new Promise((resolve, reject) => {
    const onData = (chunk) => {
      out += chunk;
      for (const line of out.split("\n")) if (ready(line)) return resolve(line);
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", (chunk) => {
      if (process.env.CHECK_VERBOSE) process.stderr.write(chunk);
      onData(chunk);
    });
    child.on("error", reject);
    child.on("exit", (code) => reject(new Error(`${name} exited (${code}) before ready:\n${out}`)));
  });
  return withTimeout(seen, 10_000, `${name} ready`).then((line) => ({ child, line }));
}

async function startNode(name, env) {
  const port = await freePort();
  const { line } = await start(name, process.execPath, [join(here, "server.js")], { PORT: String(port), NODE_ID: name, ...env }, (l) => /^READY \d+$/.test(l));
  if (line !== `READY ${port}`) throw new Error(`${name}: expected "READY ${port}", got "${line}"`);
  return port;
}

async function startRedis() {
  const port = await freePort();
  await start("redis", "redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {}, (l) => l.includes("Ready to accept connections"));
  return `redis://127.0.0.1:${port}`;
}

// A raw Engine.IO v4 / Socket.IO v5 client, speaking the frames of README.md.
class RawClient {
  constructor(name) {
    this.name = name;
    this.frames = [];
    this.events = [];
    this.waiters = [];
  }

  async connect(port, rooms) {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/socket.io/?EIO=4&transport=websocket`);
    this.ws = ws;
    sockets.add(ws);
    ws.on("message", (data) => {
      const f = data.toString();
      this.frames.push(f);
      if (f === "2") ws.send("3"); // Engine.IO heartbeat
      if (f.startsWith("42")) this.events.push(JSON.parse(f.slice(2)));
      for (const w of [...this.waiters]) w();
    });
    await withTimeout(new Promise((resolve, reject) => { ws.once("open", resolve); ws.once("error", reject); }), 5000, `${this.name} open`);
    const open = await this.next((f) => f.startsWith("0"), "Engine.IO open");
    const info = JSON.parse(open.slice(1));
    if (typeof info.sid !== "string" || typeof info.pingInterval !== "number") throw new Error(`${this.name}: bad open packet ${open}`);
    ws.send(rooms ? `40${JSON.stringify({ rooms })}` : "40");
    const ack = await this.next((f) => f.startsWith("40"), "CONNECT ack");
    if (typeof JSON.parse(ack.slice(2)).sid !== "string") throw new Error(`${this.name}: bad CONNECT ack ${ack}`);
    await this.next((f) => f === '42["ready"]', "ready event");
    return this;
  }

  // Resolves with the first frame (from the start) matching `pred`, consuming it.
  next(pred, what, ms = 5000) {
    return withTimeout(new Promise((resolve) => {
      const check = () => {
        const i = this.frames.findIndex(pred);
        if (i < 0) return false;
        const [f] = this.frames.splice(i, 1);
        this.waiters = this.waiters.filter((w) => w !== check);
        resolve(f);
        return true;
      };
      if (!check()) this.waiters.push(check);
    }), ms, `${this.name}: ${what}`);
  }

  publish(room, payload) {
    this.ws.send(`42${JSON.stringify(["publish", room, payload])}`);
  }

  received(payload) {
    return this.events.filter((e) => e[0] === "e" && e[1] === payload).length;
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function scenario(title, publishPort, subs, others) {
  const publisher = await new RawClient(`${title}/publisher`).connect(publishPort, null);
  const payload = `hello ${title} ${Date.now()} "quoted" ✓`;
  publisher.publish("r1", payload);
  await Promise.all(subs.map((s) => s.next((f) => f === `42${JSON.stringify(["e", payload])}`, `payload in ${title}`)));
  await sleep(300); // let any duplicate or misrouted delivery arrive
  for (const s of subs) if (s.received(payload) !== 1) throw new Error(`${s.name}: got the payload ${s.received(payload)} times`);
  for (const o of others) if (o.received(payload) !== 0) throw new Error(`${o.name}: is not in r1 but got the payload`);
  if (publisher.received(payload) !== 0) throw new Error("the publisher is in no room but got the payload");
  console.log(`ok - ${title}: ${subs.length} subscriber(s) in r1 got it once, ${others.length} outside r1 did not`);
}

async function main() {
  // 1. Single node, in-memory adapter.
  const solo = await startNode("solo", {});
  const a = await new RawClient("solo/sub-a").connect(solo, ["r1", "r2"]);
  const b = await new RawClient("solo/sub-b").connect(solo, ["r1"]);
  const c = await new RawClient("solo/sub-c").connect(solo, ["r2"]);
  await scenario("single node", solo, [a, b], [c]);

  // 2. Two nodes with the Redis adapter.
  const redisUrl = await startRedis();
  const n1 = await startNode("node-1", { REDIS_URL: redisUrl });
  const n2 = await startNode("node-2", { REDIS_URL: redisUrl });
  const s1 = await new RawClient("redis/sub-node-1").connect(n1, ["r1"]);
  const s2 = await new RawClient("redis/sub-node-2").connect(n2, ["r1", "r2"]);
  const s3 = await new RawClient("redis/sub-node-2-r2").connect(n2, ["r2"]);
  await scenario("two nodes + redis adapter", n1, [s1, s2], [s3]);
}

async function cleanup() {
  for (const ws of sockets) ws.terminate();
  const exits = [...children].map((c) => new Promise((r) => { c.once("exit", r); c.kill("SIGTERM"); }));
  await withTimeout(Promise.all(exits), 3000, "children exit").catch(() => {
    for (const c of children) c.kill("SIGKILL");
  });
}

for (const sig of ["SIGINT", "SIGTERM"]) {
  process.on(sig, () => {
    for (const c of children) c.kill("SIGKILL");
    process.exit(130);
  });
}

let failed = false;
try {
  await main();
} catch (err) {
  failed = true;
  console.error(`not ok - ${err.stack || err}`);
} finally {
  await cleanup();
}
process.exit(failed ? 1 : 0);
