// Socket.IO 4.8 peer for Herald's benchmarks (issue #8): an ordinary Socket.IO app
// server, alone or with @socket.io/redis-adapter, the architecture Herald replaces.
// The wire contract the bench client speaks is in README.md next to this file.
//
//   PORT=4001 node server.js                                   # single node
//   PORT=4001 REDIS_URL=redis://127.0.0.1:6379 NODE_ID=a node server.js
//
// Optional HOST (default 127.0.0.1) is the address it listens on.
//
// Prints exactly "READY <port>" on stdout once it listens (and, with REDIS_URL,
// once its Redis subscriptions are confirmed). Logs go to stderr.
import { createServer } from "node:http";
import { Server } from "socket.io";

const port = Number.parseInt(process.env.PORT ?? "", 10);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error("server.js: PORT is required (an integer 0..65535)");
  process.exit(2);
}
const host = process.env.HOST || "127.0.0.1";
const nodeId = process.env.NODE_ID || `socketio-${process.pid}`;
const redisUrl = process.env.REDIS_URL || "";
const log = (...args) => console.error(`[${nodeId}]`, ...args);

const httpServer = createServer();
const io = new Server(httpServer, {
  transports: ["websocket"],
  // perMessageDeflate stays off (the default); ping settings stay at their defaults.
});

let redisClients = [];
if (redisUrl) {
  const { createClient } = await import("redis");
  const { createAdapter } = await import("@socket.io/redis-adapter");
  const pubClient = createClient({ url: redisUrl });
  const subClient = pubClient.duplicate();
  for (const c of [pubClient, subClient]) c.on("error", (err) => log("redis error:", err.message));
  await Promise.all([pubClient.connect(), subClient.connect()]);
  redisClients = [pubClient, subClient];
  io.adapter(createAdapter(pubClient, subClient));
  // The adapter subscribes without waiting for Redis to confirm. Commands on one
  // connection are answered in order, so once this probe subscription is
  // confirmed, so are the adapter's: a publish right after READY is not lost.
  const probe = `herald-bench#probe#${nodeId}#${process.pid}`;
  await subClient.subscribe(probe, () => {});
  await subClient.unsubscribe(probe);
  log(`redis adapter on ${redisUrl}`);
}

io.on("connection", async (socket) => {
  const rooms = Array.isArray(socket.handshake.auth?.rooms)
    ? socket.handshake.auth.rooms.filter((r) => typeof r === "string")
    : [];
  socket.on("publish", (room, payload) => {
    if (typeof room !== "string") return;
    io.to(room).emit("e", payload);
  });
  if (rooms.length > 0) await socket.join(rooms);
  socket.emit("ready");
});

httpServer.listen(port, host, () => {
  const actual = httpServer.address().port;
  process.stdout.write(`READY ${actual}\n`);
  log(`listening on ${host}:${actual}`);
});

let stopping = false;
async function shutdown(signal) {
  if (stopping) return;
  stopping = true;
  log(`${signal}: closing`);
  const force = setTimeout(() => process.exit(0), 2000);
  force.unref();
  io.close();
  await Promise.allSettled(redisClients.map((c) => c.quit()));
  process.exit(0);
}
process.on("SIGTERM", () => shutdown("SIGTERM"));
process.on("SIGINT", () => shutdown("SIGINT"));
