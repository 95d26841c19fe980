// Idle-connection memory of a Herald edge (issue #8, scenario "idle").
//
// Opens C WebSocket connections to `herald serve` over several worker processes
// (one process may hold at most 20,000 open files here), each with its own JWT
// (sub u<i>, so each is in its own user:u<i> room) whose `join` claim also puts it
// in one shared room. It waits until every connection has its `welcome` and a
// `joined` for both rooms, lets the edge settle, and reports the edge's VmRSS
// (from /proc/<pid>/status) before and after, per connection. Then it holds the
// connections (answering pings: `ws` does) for --hold seconds and closes them.
//
//   scripts/bench-peers-setup.sh       # installs `ws` (bench/peers/socketio/node_modules)
//   HERALD_AUTH__HS256_SECRET=... node bench/idle-conns.mjs \
//       --url ws://127.0.0.1:8080/ws --pid <herald pid> --conns 10000 --procs 4
//
// Options: --url (default ws://127.0.0.1:8080/ws), --pid (the edge's pid; no memory
// figures without it), --conns 10000, --procs 4, --room bench:shared (give its kind
// to HERALD_PRESENCE__QUIET_KINDS, or every join announces itself to every member),
// --concurrency 200 (connects in flight per worker), --settle 5 (seconds before the
// "after" reading), --hold 0 (seconds to keep the connections after it), --secret
// (default $HERALD_AUTH__HS256_SECRET). Prints one JSON line on stdout.
// scripts/bench-idle.sh runs the whole thing (NATS, herald setup/serve, this).
import { fork } from "node:child_process";
import { createHmac } from "node:crypto";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { parseArgs } from "node:util";

const require = createRequire(new URL("./peers/socketio/package.json", import.meta.url));
const WebSocket = require("ws");

const { values: opt } = parseArgs({
  options: {
    url: { type: "string", default: "ws://127.0.0.1:8080/ws" },
    pid: { type: "string" },
    conns: { type: "string", default: "10000" },
    procs: { type: "string", default: "4" },
    room: { type: "string", default: "bench:shared" },
    concurrency: { type: "string", default: "200" },
    settle: { type: "string", default: "5" },
    hold: { type: "string", default: "0" },
    secret: { type: "string", default: process.env.HERALD_AUTH__HS256_SECRET },
    worker: { type: "string" }, // internal: "<first>:<count>"
  },
});
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function b64url(x) {
  return Buffer.from(x).toString("base64url");
}

function token(sub, secret, room) {
  const now = Math.floor(Date.now() / 1000);
  const head = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const body = b64url(JSON.stringify({ sub, exp: now + 86400, join: [room], rooms: [room] }));
  const sig = createHmac("sha256", secret).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

function rssKiB(pid) {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)[1]);
}

// ---- worker: opens its share, reports progress, holds until told to close ----
async function worker(first, count) {
  const sockets = [];
  let ready = 0;
  let failed = 0;
  let next = first;
  const end = first + count;
  const openOne = (i) =>
    new Promise((resolve) => {
      const ws = new WebSocket(`${opt.url}?token=${token(`u${i}`, opt.secret, opt.room)}`, { perMessageDeflate: false });
      sockets.push(ws);
      const want = new Set([`user:u${i}`, opt.room]);
      let welcomed = false;
      let done = false;
      const finish = (ok) => {
        if (done) return;
        done = true;
        if (ok) ready++;
        else failed++;
        resolve();
      };
      ws.on("message", (data) => {
        const f = JSON.parse(data.toString());
        if (f.type === "welcome") welcomed = true;
        if (f.type === "joined") want.delete(f.room);
        if (welcomed && want.size === 0) finish(true);
      });
      ws.on("error", () => finish(false));
      ws.on("close", (code) => {
        if (!done) finish(false);
        else if (!stopping) process.send({ lost: code });
      });
    });
  let stopping = false;
  process.on("disconnect", () => process.exit(0)); // the main process is gone
  process.on("message", (m) => {
    if (m === "close") {
      stopping = true;
      for (const ws of sockets) ws.terminate();
      setTimeout(() => process.exit(0), 200);
    }
  });
  const lanes = Array.from({ length: Number(opt.concurrency) }, async () => {
    while (next < end) await openOne(next++);
  });
  await Promise.all(lanes);
  process.send({ ready, failed });
}

// ---- main: forks workers, measures the edge ----
async function main() {
  if (!opt.secret) throw new Error("--secret or HERALD_AUTH__HS256_SECRET is required");
  const conns = Number(opt.conns);
  const procs = Math.max(1, Math.min(Number(opt.procs), conns));
  const pid = opt.pid ? Number(opt.pid) : null;
  const before = pid && rssKiB(pid);
  const t0 = Date.now();
  let lost = 0;
  const workers = [];
  const results = [];
  for (let w = 0, first = 0; w < procs; w++) {
    const count = Math.floor(conns / procs) + (w < conns % procs ? 1 : 0);
    const child = fork(new URL(import.meta.url).pathname, [...process.argv.slice(2), "--worker", `${first}:${count}`]);
    workers.push(child);
    results.push(new Promise((resolve, reject) => {
      child.on("message", (m) => (m.lost !== undefined ? lost++ : resolve(m)));
      child.on("exit", (code) => reject(new Error(`worker ${w} exited (${code})`)));
    }));
    first += count;
  }
  const stopAll = () => workers.forEach((c) => c.connected && c.send("close"));
  for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => { stopAll(); process.exit(130); });
  try {
    const rs = await Promise.all(results);
    const ready = rs.reduce((a, r) => a + r.ready, 0);
    const failed = rs.reduce((a, r) => a + r.failed, 0);
    const connectSecs = (Date.now() - t0) / 1000;
    await sleep(Number(opt.settle) * 1000);
    const after = pid && rssKiB(pid);
    const out = { conns, ready, failed, lost, connect_secs: connectSecs, rss_before_kib: before, rss_after_kib: after };
    if (pid && ready > 0) out.kib_per_conn = Number(((after - before) / ready).toFixed(2));
    console.log(JSON.stringify(out));
    await sleep(Number(opt.hold) * 1000);
  } finally {
    stopAll();
  }
}

if (opt.worker) {
  const [first, count] = opt.worker.split(":").map(Number);
  await worker(first, count);
} else {
  await main();
}
