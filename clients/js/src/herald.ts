/**
 * Herald browser client: one WebSocket to a Herald edge, with reconnect and exact
 * resume, an offline queue, per-room listeners and typed events.
 *
 * Zero runtime dependencies: in browsers it uses the global `WebSocket`; in Node
 * pass a constructor with the `WebSocket` option (Node 22+ has a global one).
 *
 * ```ts
 * const herald = new Herald({ url: "wss://rt.example.com/ws", token: getToken });
 * const room = herald.join("channel:42");
 * room.on("message:new", (msg) => render(msg));
 * await herald.emit("message:send", { room: "channel:42", text: "hi" });
 * ```
 *
 * @module
 */

// ---------------------------------------------------------------------------
// Wire types (docs/PROTOCOL.md)
// ---------------------------------------------------------------------------

/** A room's resume point: the stream epoch and the last sequence seen. */
export interface Cursor {
  epoch: string;
  seq: number;
}

/** `welcome`: sent once the edge has accepted the token. */
export interface Welcome {
  conn: string;
  user: string;
  edge: string;
  ping_ms: number;
}

/** What a `joined` frame says about a room. */
export interface JoinedInfo {
  room: string;
  epoch: string;
  /** The room's last stored sequence when the join took effect. */
  seq: number;
  /** True when every event missed since the cursor follows (possibly none). */
  recovered: boolean;
  /** How many replayed events follow before live ones. */
  missed: number;
  /** True when this join resumed from a cursor (a reconnect or rejoin). */
  resumed: boolean;
  /** True for a join the edge made by itself: the private room, the token's `join`
   * claim, or a gap notice (then `recovered` is false). */
  automatic: boolean;
}

/** An event as the edge delivers it (also the items of `history()`). */
export interface EventFrame<T = unknown> {
  type: "event";
  room: string;
  event: string;
  /** Stream sequence; absent on volatile events. */
  seq?: number;
  data: T;
}

/** Where an event came from, passed to listeners beside its data. */
export interface EventMeta {
  room: string;
  event: string;
  /** Absent on volatile events. */
  seq?: number;
  /** True while the event is part of a replay after a (re)join. */
  replayed: boolean;
}

/** One user present in a room (`members()`). */
export interface Member {
  user: string;
  conns: number;
  info?: unknown;
}

export interface PresenceJoin {
  room: string;
  user: string;
  info?: unknown;
}

export interface PresenceLeave {
  room: string;
  user: string;
}

/** The `disconnect` frame the edge sends before it closes, or a close seen without one. */
export interface DisconnectInfo {
  code: number;
  reason: string;
  /** Whether the client will try again. */
  reconnect: boolean;
}

/** Connection states, in the order a healthy connection goes through them. */
export type ConnectionState =
  /** Not connected and not trying: before `connect()` or after `close()`. */
  | "idle"
  /** First attempt in progress. */
  | "connecting"
  /** Welcome received; requests flow. */
  | "connected"
  /** Lost; waiting for the next attempt or attempting. */
  | "reconnecting"
  /** Stopped for good: the edge refused the credentials (4001/4003/1008) or the token expired and cannot be renewed. */
  | "closed";

export interface StateChange {
  state: ConnectionState;
  previous: ConnectionState;
  /** Close code that caused the change, if any. */
  code?: number;
  reason?: string;
  /** In `reconnecting`: milliseconds until the next attempt. */
  retryInMs?: number;
  /** In `reconnecting`: how many attempts failed in a row so far. */
  attempt?: number;
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/**
 * Codes a request can fail with: the edge's (see PROTOCOL.md §6) and the client's
 * own: `timeout` (no answer in time), `disconnected` (the connection dropped after an
 * `emit`/`publish` was sent, so whether it took effect is unknown), `queue_full`,
 * `closed` (the client was closed).
 */
export type ErrorCode =
  | "bad_request"
  | "invalid_room"
  | "forbidden"
  | "not_found"
  | "no_handler"
  | "timeout"
  | "rate_limited"
  | "too_large"
  | "unavailable"
  | "disconnected"
  | "queue_full"
  | "closed"
  | (string & {});

/** A failed request. Branch on `code`; `message` is for humans. */
export class HeraldError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string) {
    super(message);
    this.name = "HeraldError";
    this.code = code;
  }
}

// ---------------------------------------------------------------------------
// Typed event maps
// ---------------------------------------------------------------------------

/** App events: event name → payload type. */
export type EventMap = Record<string, unknown>;

/** RPCs for `emit`: event name → request and reply types. */
export type RpcMap = Record<string, { request: unknown; reply: unknown }>;

/**
 * Built-in events. Their names start with `$`, which the protocol never allows in
 * an event name, so they cannot clash with an app's events.
 */
export interface SystemEvents {
  /** The connection state changed. */
  $state: [change: StateChange];
  /** The edge accepted the connection. */
  $welcome: [welcome: Welcome];
  /** The connection ended (with the edge's reason when it sent one). */
  $disconnect: [info: DisconnectInfo];
  /** A room was joined or rejoined; check `recovered` after a reconnect. */
  $joined: [info: JoinedInfo];
  /** A user arrived in a room (first connection). */
  $presence_join: [p: PresenceJoin];
  /** A user left a room (last connection). */
  $presence_leave: [p: PresenceLeave];
  /** An error not tied to a request (such as a refused automatic join), or a token provider failure. */
  $error: [err: HeraldError];
}

/** The arguments a listener of `name` gets. */
export type ListenerArgs<E extends EventMap, K> = K extends keyof SystemEvents
  ? SystemEvents[K]
  : K extends "*"
    ? [data: E[keyof E], meta: EventMeta]
    : K extends keyof E
      ? [data: E[K], meta: EventMeta]
      : [data: unknown, meta: EventMeta];

/** Names a listener can subscribe to: app events, `"*"` (every app event), and the `$` events. */
export type ListenerName<E extends EventMap> = (keyof E & string) | "*" | keyof SystemEvents;

export type Listener<E extends EventMap, K> = (...args: ListenerArgs<E, K>) => void;

// ---------------------------------------------------------------------------
// Emitter: listener isolation
// ---------------------------------------------------------------------------

// Listeners are stored untyped; the public methods check their types.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type AnyFn = (...args: any[]) => void;

/**
 * A small event emitter. A listener that throws is reported (to `onListenerError`,
 * by default `console.error`) and never stops the other listeners; listeners added
 * or removed during a dispatch take effect from the next one.
 */
export class Emitter {
  private readonly listeners = new Map<string, Set<{ fn: AnyFn; once: boolean }>>();
  constructor(private readonly onListenerError: (err: unknown, name: string) => void) {}

  on(name: string, fn: AnyFn, once = false): () => void {
    let set = this.listeners.get(name);
    if (!set) {
      set = new Set();
      this.listeners.set(name, set);
    }
    const entry = { fn, once };
    set.add(entry);
    return () => {
      set.delete(entry);
    };
  }

  off(name: string, fn?: AnyFn): void {
    if (fn === undefined) {
      this.listeners.delete(name);
      return;
    }
    const set = this.listeners.get(name);
    if (!set) return;
    for (const e of set) {
      if (e.fn === fn) set.delete(e);
    }
  }

  has(name: string): boolean {
    return (this.listeners.get(name)?.size ?? 0) > 0;
  }

  emit(name: string, args: unknown[]): void {
    const set = this.listeners.get(name);
    if (!set || set.size === 0) return;
    for (const e of [...set]) {
      if (!set.has(e)) continue;
      if (e.once) set.delete(e);
      try {
        (e.fn as (...a: unknown[]) => void)(...args);
      } catch (err) {
        try {
          this.onListenerError(err, name);
        } catch {
          // The error reporter itself failed: nothing sensible is left to do.
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Backoff
// ---------------------------------------------------------------------------

/** Reconnect timing. */
export interface BackoffOptions {
  /** Delay before the first retry, in ms (default 500). */
  initialDelayMs?: number;
  /** Upper bound of the delay, in ms (default 15 000). */
  maxDelayMs?: number;
  /** Growth per failed attempt (default 2). */
  factor?: number;
  /** Fraction of the delay taken off at random, 0..1 (default 0.5: a delay is
   * between half and all of the nominal one), so clients dropped together do not
   * come back together. */
  jitter?: number;
  /** Give up after this many failed attempts in a row (default: never). */
  maxAttempts?: number;
}

/** The delay before retry number `attempt` (0-based), exponential with jitter. */
export function backoffDelay(
  attempt: number,
  opts: BackoffOptions = {},
  random: () => number = Math.random,
): number {
  const initial = opts.initialDelayMs ?? 500;
  const max = opts.maxDelayMs ?? 15_000;
  const factor = opts.factor ?? 2;
  const jitter = Math.min(1, Math.max(0, opts.jitter ?? 0.5));
  const nominal = Math.min(max, initial * Math.pow(factor, Math.max(0, attempt)));
  return Math.round(nominal * (1 - jitter * random()));
}

// ---------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------

/** A token, or a function that returns a fresh one (called on every connect, before expiry and after 4002). */
export type TokenSource = string | (() => string | Promise<string>);

/** Reads `exp` (seconds since the epoch) from a JWT without verifying it; undefined when absent or not a JWT. */
export function tokenExpiry(token: string): number | undefined {
  const part = token.split(".")[1];
  if (!part) return undefined;
  try {
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const padded = b64 + "=".repeat((4 - (b64.length % 4)) % 4);
    const bin = atob(padded);
    const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes)) as { exp?: unknown };
    return typeof claims.exp === "number" ? claims.exp : undefined;
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------------------
// Client options
// ---------------------------------------------------------------------------

/** The part of the WebSocket API the client uses. */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface HeraldOptions {
  /** `ws://` or `wss://` URL of the edge's `/ws`. */
  url: string;
  /** A token or a token provider, sent in the first frame (never in the URL). Omit it when the edge finds the token itself (a cookie). */
  token?: TokenSource;
  /** WebSocket constructor (default: the global one). */
  WebSocket?: WebSocketConstructor;
  /** Reconnect timing, or `false` to never reconnect. */
  reconnect?: BackoffOptions | false;
  /** Default time a request may take, queueing included, in ms (default 10 000). */
  requestTimeoutMs?: number;
  /** How many `emit`/`publish` calls may wait for a connection (default 1000). */
  maxQueue?: number;
  /** Ask the token provider for a new token this long before `exp`, in ms (default 30 000). */
  refreshBeforeExpiryMs?: number;
  /** Send an application ping this often to notice a dead connection, in ms (default: the edge's `ping_ms`; 0 disables). */
  heartbeatMs?: number;
  /** Close and reconnect when a ping is not answered within this, in ms (default 10 000). */
  heartbeatTimeoutMs?: number;
  /** Connect at once (default true); otherwise call `connect()`. */
  autoConnect?: boolean;
  /** Where a throwing listener's error goes (default `console.error`). */
  onListenerError?: (err: unknown, event: string) => void;
  /** Random source for jitter (tests). */
  random?: () => number;
}

export interface RequestOptions {
  /** Overrides `requestTimeoutMs` for this call. */
  timeoutMs?: number;
}

export interface JoinOptions extends RequestOptions {
  /** Resume from this cursor (e.g. one saved in storage). By default the room's own cursor is used when it has one. */
  since?: Cursor;
}

// ---------------------------------------------------------------------------
// Internals
// ---------------------------------------------------------------------------

interface Pending {
  id: number;
  /** Makes the frame at send time (a join then carries the cursor current when it is sent). */
  build: () => Record<string, unknown>;
  /** Safe to send again after a reconnect (reads and joins). */
  idempotent: boolean;
  sent: boolean;
  timer: ReturnType<typeof setTimeout> | undefined;
  resolve: (frame: Record<string, unknown>) => void;
  reject: (err: HeraldError) => void;
}

const OPEN = 1;
/** Close codes after which trying again cannot help. */
const FATAL_CODES = new Set([4001, 4003, 1008]);

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

// ---------------------------------------------------------------------------
// Room
// ---------------------------------------------------------------------------

/**
 * One room: its listeners, its cursor, and whether the app wants to be in it.
 * Get it with `herald.room(name)` or `herald.join(name)`.
 */
export class Room<E extends EventMap = EventMap> {
  /** The last position seen in this room, or undefined before the first join. */
  cursor: Cursor | undefined;
  /** Whether the edge currently has this connection in the room. */
  joined = false;
  /** Whether the client keeps this room joined across reconnects. */
  wanted = false;
  /** Joined by the edge itself at connect (private room, `join` claim). */
  automatic = false;
  /** Events of this room are being skipped until our own `joined` answer arrives (see resync). */
  resyncing = false;
  /** Replayed events still expected after the last `joined`. */
  replayLeft = 0;
  /** @internal */
  readonly emitter: Emitter;

  constructor(
    readonly name: string,
    private readonly client: Herald<E, RpcMap>,
    onListenerError: (err: unknown, name: string) => void,
  ) {
    this.emitter = new Emitter(onListenerError);
  }

  /** Listens to an event of this room (`"*"`: every app event; `$joined`, `$presence_join`, `$presence_leave`: this room's). Returns a function that removes the listener. */
  on<K extends ListenerName<E>>(name: K, fn: Listener<E, K>): () => void {
    return this.emitter.on(name, fn as AnyFn);
  }

  /** Like `on`, for one call only. */
  once<K extends ListenerName<E>>(name: K, fn: Listener<E, K>): () => void {
    return this.emitter.on(name, fn as AnyFn, true);
  }

  /** Removes one listener, or every listener of `name` when `fn` is omitted. */
  off<K extends ListenerName<E>>(name: K, fn?: Listener<E, K>): void {
    this.emitter.off(name, fn as AnyFn | undefined);
  }

  /** Joins (or confirms) the room; it stays joined across reconnects until `leave()`. */
  join(opts: JoinOptions = {}): Promise<JoinedInfo> {
    return this.client.joinRoom(this, opts);
  }

  /** Leaves the room and stops rejoining it. */
  leave(opts: RequestOptions = {}): Promise<void> {
    return this.client.leaveRoom(this, opts);
  }

  /** Who is in the room now. */
  members(opts: RequestOptions = {}): Promise<Member[]> {
    return this.client.members(this.name, opts);
  }

  /** The last `limit` stored events, oldest first. */
  history(opts: RequestOptions & { limit?: number } = {}): Promise<EventFrame<E[keyof E]>[]> {
    return this.client.history(this.name, opts) as Promise<EventFrame<E[keyof E]>[]>;
  }

  /** Sends a volatile event to the room's other members (needs the token's `publish` claim). */
  publish<K extends keyof E & string>(event: K, data: E[K], opts: RequestOptions = {}): Promise<void> {
    return this.client.publish(this.name, event, data, opts);
  }
}

// ---------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------

/**
 * A connection to a Herald edge that survives disconnects.
 *
 * `E` maps app event names to their payload types; `R` maps `emit` event names to
 * request and reply types. Both default to "anything".
 */
export class Herald<E extends EventMap = EventMap, R extends RpcMap = RpcMap> {
  private readonly opts: HeraldOptions;
  private readonly Ws: WebSocketConstructor;
  private readonly emitter: Emitter;
  private readonly reportListenerError: (err: unknown, name: string) => void;
  private readonly rooms = new Map<string, Room<E>>();
  private readonly pending = new Map<number, Pending>();
  /** Requests waiting for a connection, in call order. */
  private queue: Pending[] = [];
  private nextId = 1;
  private socket: WebSocketLike | undefined;
  private socketSerial = 0;
  private authenticated = false;
  private everConnected = false;
  private attempt = 0;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  private refreshTimer: ReturnType<typeof setTimeout> | undefined;
  private heartbeatTimer: ReturnType<typeof setInterval> | undefined;
  private heartbeatDeadline: ReturnType<typeof setTimeout> | undefined;
  private lastDisconnect: DisconnectInfo | undefined;
  private currentToken: string | undefined;
  private _state: ConnectionState = "idle";
  private _welcome: Welcome | undefined;
  private readonly onOnline = (): void => {
    if (this._state === "reconnecting" && this.retryTimer !== undefined) {
      clearTimeout(this.retryTimer);
      this.retryTimer = undefined;
      this.open();
    }
  };

  constructor(opts: HeraldOptions) {
    this.opts = opts;
    const Ws =
      opts.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!Ws) {
      throw new Error("no WebSocket available: pass one with the `WebSocket` option");
    }
    this.Ws = Ws;
    this.reportListenerError =
      opts.onListenerError ??
      ((err, name) => {
        console.error(`herald: a listener of "${name}" threw`, err);
      });
    this.emitter = new Emitter(this.reportListenerError);
    if (opts.autoConnect !== false) this.connect();
  }

  /** The current connection state. */
  get state(): ConnectionState {
    return this._state;
  }

  /** The user id the edge confirmed (after the first `welcome`). */
  get user(): string | undefined {
    return this._welcome?.user;
  }

  /** The current connection's id (as services see it in `Herald-Conn`). */
  get conn(): string | undefined {
    return this._state === "connected" ? this._welcome?.conn : undefined;
  }

  /** The last `welcome`. */
  get welcome(): Welcome | undefined {
    return this._welcome;
  }

  /** How many `emit`/`publish` calls are waiting for a connection. */
  get queued(): number {
    return this.queue.length;
  }

  // -- listeners -----------------------------------------------------------

  /** Listens to an app event from every room, to `"*"` (every app event) or to a `$` event. Returns a function that removes the listener. */
  on<K extends ListenerName<E>>(name: K, fn: Listener<E, K>): () => void {
    return this.emitter.on(name, fn as AnyFn);
  }

  /** Like `on`, for one call only. */
  once<K extends ListenerName<E>>(name: K, fn: Listener<E, K>): () => void {
    return this.emitter.on(name, fn as AnyFn, true);
  }

  /** Removes one listener, or every listener of `name` when `fn` is omitted. */
  off<K extends ListenerName<E>>(name: K, fn?: Listener<E, K>): void {
    this.emitter.off(name, fn as AnyFn | undefined);
  }

  // -- rooms ---------------------------------------------------------------

  /** The room object for `name` (created on first use; does not join). */
  room(name: string): Room<E> {
    let r = this.rooms.get(name);
    if (!r) {
      r = new Room<E>(name, this as unknown as Herald<E, RpcMap>, this.reportListenerError);
      this.rooms.set(name, r);
    }
    return r;
  }

  /** Joins `name` (now, or as soon as connected) and keeps it joined across reconnects. The returned room can take listeners at once; `room.join()` gives the answer. */
  join(name: string, opts: JoinOptions = {}): Room<E> {
    const r = this.room(name);
    this.joinRoom(r, opts).catch((err: HeraldError) => {
      this.emitter.emit("$error", [new HeraldError(err.code, `joining ${name}: ${err.message}`)]);
    });
    return r;
  }

  /** @internal Used by `Room.join`. */
  joinRoom(r: Room<E>, opts: JoinOptions): Promise<JoinedInfo> {
    r.wanted = true;
    if (opts.since) r.cursor = { ...opts.since };
    const p = this.request(
      () => this.joinFrame(r),
      true,
      opts.timeoutMs,
    ).then((f) => f["__info"] as JoinedInfo);
    p.catch((err: HeraldError) => {
      // Refused for good: stop rejoining it. Transient failures keep it wanted.
      if (err.code === "forbidden" || err.code === "invalid_room" || err.code === "bad_request") {
        r.wanted = false;
      }
    });
    return p;
  }

  /** @internal Used by `Room.leave`. */
  async leaveRoom(r: Room<E>, opts: RequestOptions): Promise<void> {
    r.wanted = false;
    for (const p of [...this.queue]) {
      const f = p.build();
      if (f["type"] === "join" && f["room"] === r.name) {
        this.settle(p);
        p.reject(new HeraldError("closed", `left ${r.name} before joining it`));
      }
    }
    if (this._state !== "connected" || !r.joined) {
      r.joined = false;
      return;
    }
    try {
      await this.request(() => ({ type: "leave", room: r.name }), true, opts.timeoutMs);
    } catch (err) {
      if (!(err instanceof HeraldError && err.code === "not_found")) throw err;
    } finally {
      r.joined = false;
    }
  }

  private joinFrame(r: Room<E>): Record<string, unknown> {
    const f: Record<string, unknown> = { type: "join", room: r.name };
    if (r.cursor) f["since"] = { epoch: r.cursor.epoch, seq: r.cursor.seq };
    return f;
  }

  // -- requests --------------------------------------------------------------

  /**
   * Calls the service that handles `event` (`P.rpc.<event>`) and resolves with its
   * reply. Waits in the queue while offline. An `emit` that was sent but not answered
   * before the connection dropped rejects with `disconnected` (it may or may not
   * have run; give it an idempotency key of your own to retry safely).
   */
  emit<K extends keyof R & string>(
    event: K,
    data: R[K]["request"],
    opts: RequestOptions = {},
  ): Promise<R[K]["reply"]> {
    return this.request(() => ({ type: "emit", event, data }), false, opts.timeoutMs).then(
      (f) => f["data"] as R[K]["reply"],
    );
  }

  /** Sends a volatile event to a room (no `seq`, not stored, at most once). */
  publish<K extends keyof E & string>(
    room: string,
    event: K,
    data: E[K],
    opts: RequestOptions = {},
  ): Promise<void> {
    return this.request(() => ({ type: "publish", room, event, data }), false, opts.timeoutMs).then(
      () => undefined,
    );
  }

  /** The last `limit` stored events of a room, oldest first. */
  history(room: string, opts: RequestOptions & { limit?: number } = {}): Promise<EventFrame[]> {
    return this.request(
      () => {
        const f: Record<string, unknown> = { type: "history", room };
        if (opts.limit !== undefined) f["limit"] = opts.limit;
        return f;
      },
      true,
      opts.timeoutMs,
    ).then((f) => (Array.isArray(f["events"]) ? (f["events"] as EventFrame[]) : []));
  }

  /** Who is in a room now (each user once, with their connection count and info). */
  members(room: string, opts: RequestOptions = {}): Promise<Member[]> {
    return this.request(() => ({ type: "presence", room }), true, opts.timeoutMs).then((f) =>
      Array.isArray(f["users"]) ? (f["users"] as Member[]) : [],
    );
  }

  /**
   * Queues or sends one request. `build` makes the frame at send time (so a join
   * carries the cursor current when it is sent). `idempotent` requests in flight
   * when the connection drops are sent again after reconnecting; the others reject
   * with `disconnected`.
   */
  private request(
    build: () => Record<string, unknown>,
    idempotent: boolean,
    timeoutMs: number | undefined,
  ): Promise<Record<string, unknown>> {
    if (this._state === "closed") {
      return Promise.reject(new HeraldError("closed", "the client is closed"));
    }
    if (!idempotent && this.queue.length >= (this.opts.maxQueue ?? 1000) && !this.canSend()) {
      return Promise.reject(new HeraldError("queue_full", "too many requests waiting for a connection"));
    }
    return new Promise((resolve, reject) => {
      const id = this.nextId++;
      const p: Pending = {
        id,
        build,
        idempotent,
        sent: false,
        timer: undefined,
        resolve,
        reject,
      };
      const ms = timeoutMs ?? this.opts.requestTimeoutMs ?? 10_000;
      if (ms > 0 && Number.isFinite(ms)) {
        p.timer = setTimeout(() => {
          this.settle(p);
          reject(new HeraldError("timeout", `no answer within ${ms} ms`));
        }, ms);
      }
      this.pending.set(id, p);
      if (this.canSend()) this.sendPending(p);
      else this.queue.push(p);
    });
  }

  private canSend(): boolean {
    return this.authenticated && this.socket !== undefined && this.socket.readyState === OPEN;
  }

  private sendPending(p: Pending): void {
    p.sent = true;
    this.sendFrame({ ...p.build(), id: p.id });
  }

  private settle(p: Pending): void {
    if (p.timer !== undefined) clearTimeout(p.timer);
    this.pending.delete(p.id);
    const i = this.queue.indexOf(p);
    if (i >= 0) this.queue.splice(i, 1);
  }

  private sendFrame(frame: Record<string, unknown>): void {
    try {
      this.socket?.send(JSON.stringify(frame));
    } catch {
      // The socket is closing; its close handler will requeue or reject.
    }
  }

  // -- connection ------------------------------------------------------------

  /** Starts connecting (if idle). */
  connect(): void {
    if (this._state !== "idle" && this._state !== "closed") return;
    this.attempt = 0;
    this.lastDisconnect = undefined;
    if (typeof globalThis.addEventListener === "function") {
      globalThis.addEventListener("online", this.onOnline);
    }
    this.setState({ state: "connecting" });
    this.open();
  }

  /** Closes the connection and stops reconnecting; waiting requests reject with `closed`. Rooms and their cursors are kept, so `connect()` resumes. */
  close(): void {
    this.stop("idle", { code: 1000, reason: "closed by the client", reconnect: false });
  }

  private stop(state: "idle" | "closed", info: DisconnectInfo): void {
    if (typeof globalThis.removeEventListener === "function") {
      globalThis.removeEventListener("online", this.onOnline);
    }
    this.clearTimers();
    const s = this.socket;
    this.socket = undefined;
    this.authenticated = false;
    if (s) {
      this.detach(s);
      try {
        s.close(1000);
      } catch {
        // Already closed.
      }
    }
    for (const r of this.rooms.values()) r.joined = false;
    const all = [...this.pending.values()];
    this.queue = [];
    for (const p of all) {
      this.settle(p);
      p.reject(new HeraldError("closed", info.reason));
    }
    if (this._state !== state) {
      this.setState({ state, code: info.code, reason: info.reason });
    }
  }

  private clearTimers(): void {
    if (this.retryTimer !== undefined) clearTimeout(this.retryTimer);
    if (this.refreshTimer !== undefined) clearTimeout(this.refreshTimer);
    if (this.heartbeatTimer !== undefined) clearInterval(this.heartbeatTimer);
    if (this.heartbeatDeadline !== undefined) clearTimeout(this.heartbeatDeadline);
    this.retryTimer = this.refreshTimer = this.heartbeatTimer = this.heartbeatDeadline = undefined;
  }

  private setState(change: Omit<StateChange, "previous">): void {
    const previous = this._state;
    this._state = change.state;
    this.emitter.emit("$state", [{ ...change, previous }]);
  }

  private async getToken(): Promise<string | undefined> {
    const t = this.opts.token;
    return typeof t === "function" ? await t() : t;
  }

  private open(): void {
    this.retryTimer = undefined;
    const serial = ++this.socketSerial;
    this.getToken().then(
      (token) => {
        if (serial !== this.socketSerial || !this.isTrying()) return;
        this.currentToken = token;
        let s: WebSocketLike;
        try {
          s = new this.Ws(this.opts.url);
        } catch (err) {
          this.emitter.emit("$error", [new HeraldError("unavailable", `cannot open ${this.opts.url}: ${String(err)}`)]);
          this.lost({ code: 1006, reason: "could not open the socket", reconnect: true });
          return;
        }
        this.socket = s;
        s.onopen = () => {
          if (token !== undefined) s.send(JSON.stringify({ type: "auth", token }));
        };
        s.onmessage = (ev) => {
          if (this.socket === s) this.onFrame(ev.data);
        };
        s.onerror = () => {
          // Always followed by a close event.
        };
        s.onclose = (ev) => {
          if (this.socket !== s) return;
          const info = this.lastDisconnect ?? {
            code: ev.code,
            reason: ev.reason,
            reconnect: !FATAL_CODES.has(ev.code),
          };
          this.lastDisconnect = undefined;
          this.lost({ ...info, code: ev.code || info.code });
        };
      },
      (err: unknown) => {
        if (serial !== this.socketSerial || !this.isTrying()) return;
        this.emitter.emit("$error", [new HeraldError("unavailable", `the token provider failed: ${String(err)}`)]);
        this.lost({ code: 0, reason: "token provider failed", reconnect: true });
      },
    );
  }

  private isTrying(): boolean {
    return this._state === "connecting" || this._state === "reconnecting" || this._state === "connected";
  }

  private detach(s: WebSocketLike): void {
    s.onopen = s.onmessage = s.onclose = s.onerror = null;
  }

  /** The socket is gone: requeue what can be resent, then retry or stop. */
  private lost(info: DisconnectInfo): void {
    const s = this.socket;
    this.socket = undefined;
    if (s) this.detach(s);
    const wasConnected = this.authenticated;
    this.authenticated = false;
    this.clearTimers();
    for (const r of this.rooms.values()) {
      r.joined = false;
      r.resyncing = false;
      r.replayLeft = 0;
    }
    // Requests in flight: reads and joins go back to the queue (front, in order);
    // emits and publishes may have taken effect, so they fail.
    const inflight = [...this.pending.values()].filter((p) => p.sent).sort((a, b) => a.id - b.id);
    const requeue: Pending[] = [];
    for (const p of inflight) {
      p.sent = false;
      if (p.idempotent) {
        requeue.push(p);
      } else {
        this.settle(p);
        p.reject(new HeraldError("disconnected", `the connection dropped before the answer (${info.code} ${info.reason})`));
      }
    }
    this.queue = [...requeue, ...this.queue];

    const fatal = FATAL_CODES.has(info.code) || !info.reconnect;
    const staticToken = typeof this.opts.token !== "function";
    const expiredForGood = info.code === 4002 && staticToken;
    const reconnect = this.opts.reconnect;
    const giveUp =
      fatal ||
      expiredForGood ||
      reconnect === false ||
      (reconnect?.maxAttempts !== undefined && this.attempt >= reconnect.maxAttempts);
    this.emitter.emit("$disconnect", [{ ...info, reconnect: !giveUp }]);
    if (giveUp) {
      this.stop("closed", info);
      return;
    }
    // A fresh token can be fetched at once after 4002; other failures back off.
    const delay =
      info.code === 4002 && wasConnected
        ? 0
        : backoffDelay(this.attempt, reconnect === undefined ? {} : reconnect, this.opts.random);
    this.attempt++;
    this.setState({
      state: "reconnecting",
      code: info.code,
      reason: info.reason,
      retryInMs: delay,
      attempt: this.attempt,
    });
    this.retryTimer = setTimeout(() => this.open(), delay);
  }

  private onFrame(raw: unknown): void {
    if (typeof raw !== "string") return;
    let f: unknown;
    try {
      f = JSON.parse(raw);
    } catch {
      return;
    }
    if (!isRecord(f)) return;
    switch (f["type"]) {
      case "welcome":
        this.onWelcome(f as unknown as Welcome);
        return;
      case "joined":
        this.onJoined(f);
        return;
      case "event":
        this.onEvent(f as unknown as EventFrame & { id?: number });
        return;
      case "presence_join":
      case "presence_leave":
        this.onPresence(f);
        return;
      case "disconnect":
        this.lastDisconnect = {
          code: typeof f["code"] === "number" ? f["code"] : 1006,
          reason: typeof f["reason"] === "string" ? f["reason"] : "",
          reconnect: f["reconnect"] !== false,
        };
        return;
      case "pong":
        if (this.heartbeatDeadline !== undefined) clearTimeout(this.heartbeatDeadline);
        this.heartbeatDeadline = undefined;
        return;
      case "error":
        this.onError(f);
        return;
      default:
        this.answer(f);
    }
  }

  private answer(f: Record<string, unknown>): void {
    const id = f["id"];
    if (typeof id !== "number") return;
    const p = this.pending.get(id);
    if (!p) return;
    this.settle(p);
    p.resolve(f);
  }

  private onError(f: Record<string, unknown>): void {
    const err = new HeraldError(
      typeof f["code"] === "string" ? f["code"] : "bad_request",
      typeof f["message"] === "string" ? f["message"] : "",
    );
    const id = f["id"];
    const p = typeof id === "number" ? this.pending.get(id) : undefined;
    if (p) {
      this.settle(p);
      p.reject(err);
      return;
    }
    this.emitter.emit("$error", [err]);
  }

  private onWelcome(w: Welcome): void {
    const resumed = this.everConnected;
    this._welcome = w;
    this.authenticated = true;
    this.everConnected = true;
    this.attempt = 0;
    this.setState({ state: "connected" });
    this.emitter.emit("$welcome", [w]);
    this.scheduleRefresh();
    this.startHeartbeat(w.ping_ms);
    // Rooms first (joins carry their cursors), then everything queued, in order.
    const queuedJoins = new Set<unknown>();
    for (const p of this.queue) {
      const f = p.build();
      if (f["type"] === "join") queuedJoins.add(f["room"]);
    }
    for (const r of this.rooms.values()) {
      if (!r.wanted || queuedJoins.has(r.name)) continue;
      this.resyncIfAutomatic(r, resumed);
      this.rejoin(r);
    }
    const queued = this.queue;
    this.queue = [];
    for (const p of queued) {
      const f = p.build();
      if (f["type"] === "join") {
        const r = this.rooms.get(String(f["room"]));
        if (r) this.resyncIfAutomatic(r, resumed);
      }
      if (this.pending.has(p.id)) this.sendPending(p);
    }
  }

  /**
   * After a reconnect the edge joins the private room (and the token's `join`
   * rooms) by itself, without a cursor, so nothing missed would be replayed. For
   * such a room with a cursor: leave it and join again with the cursor, skipping its
   * events until the answer arrives (the replay covers them exactly).
   */
  private resyncIfAutomatic(r: Room<E>, resumed: boolean): void {
    if (resumed && r.automatic && r.cursor && !r.resyncing) {
      r.resyncing = true;
      this.sendFrame({ type: "leave", room: r.name });
    }
  }

  private rejoin(r: Room<E>): void {
    this.request(() => this.joinFrame(r), true, undefined).then(
      () => undefined,
      (err: HeraldError) => {
        if (err.code === "forbidden" || err.code === "invalid_room") r.wanted = false;
        this.emitter.emit("$error", [new HeraldError(err.code, `rejoining ${r.name}: ${err.message}`)]);
      },
    );
  }

  /** Handles a `joined` frame: an answer to our join (`id`), an automatic join, or a gap notice. */
  private onJoined(f: Record<string, unknown>): void {
    if (typeof f["id"] === "number") {
      // Our answer. The room's state is updated now, synchronously, so that the
      // replayed events that follow are counted before any of them is dispatched.
      // (Applied even when the request timed out meanwhile: the edge did join.)
      const info = this.applyJoined(f, false);
      const p = this.pending.get(f["id"]);
      if (p) {
        this.settle(p);
        // Listeners ran above, in frame order; the promise resolves after.
        p.resolve({ ...f, __info: info });
      }
      return;
    }
    const name = f["room"];
    if (typeof name !== "string") return;
    const r = this.room(name);
    if (r.resyncing) return; // The edge's own join; our join with a cursor follows.
    if (!r.joined) {
      r.automatic = true;
      r.wanted = true;
    }
    this.applyJoined(f, true);
  }

  private applyJoined(f: Record<string, unknown>, automatic: boolean): JoinedInfo {
    const name = String(f["room"]);
    const r = this.room(name);
    const epoch = String(f["epoch"] ?? "");
    const seq = typeof f["seq"] === "number" ? f["seq"] : 0;
    const missed = typeof f["missed"] === "number" ? f["missed"] : 0;
    const recovered = f["recovered"] === true;
    const resumed = r.cursor !== undefined;
    r.joined = true;
    r.resyncing = false;
    r.replayLeft = missed;
    if (missed > 0 && r.cursor && r.cursor.epoch === epoch) {
      // The replayed events move the cursor as they arrive.
    } else {
      r.cursor = { epoch, seq };
    }
    const info: JoinedInfo = { room: name, epoch, seq, recovered, missed, resumed, automatic };
    r.emitter.emit("$joined", [info]);
    this.emitter.emit("$joined", [info]);
    return info;
  }

  private onEvent(f: EventFrame): void {
    if (typeof f.room !== "string" || typeof f.event !== "string") return;
    const r = this.rooms.get(f.room);
    if (r?.resyncing) return;
    let replayed = false;
    if (r && typeof f.seq === "number") {
      if (r.replayLeft > 0) {
        replayed = true;
        r.replayLeft--;
      }
      r.cursor = { epoch: r.cursor?.epoch ?? "", seq: f.seq };
    }
    const meta: EventMeta = { room: f.room, event: f.event, replayed };
    if (typeof f.seq === "number") meta.seq = f.seq;
    const args = [f.data, meta];
    if (r) {
      r.emitter.emit(f.event, args);
      r.emitter.emit("*", args);
    }
    this.emitter.emit(f.event, args);
    this.emitter.emit("*", args);
  }

  private onPresence(f: Record<string, unknown>): void {
    const name = f["type"] as "presence_join" | "presence_leave";
    const room = typeof f["room"] === "string" ? f["room"] : "";
    const user = typeof f["user"] === "string" ? f["user"] : "";
    const p: PresenceJoin = { room, user };
    if (name === "presence_join" && f["info"] !== undefined) p.info = f["info"];
    const r = this.rooms.get(room);
    if (r?.resyncing) return;
    r?.emitter.emit(`$${name}`, [p]);
    this.emitter.emit(`$${name}`, [p]);
  }

  // -- token refresh and heartbeat ---------------------------------------------

  private scheduleRefresh(): void {
    if (typeof this.opts.token !== "function" || this.currentToken === undefined) return;
    const exp = tokenExpiry(this.currentToken);
    if (exp === undefined) return;
    const lead = this.opts.refreshBeforeExpiryMs ?? 30_000;
    const inMs = Math.max(0, exp * 1000 - Date.now() - lead);
    // setTimeout's limit is about 24.8 days; a longer wait is re-armed when it fires.
    const wait = Math.min(inMs, 2_000_000_000);
    this.refreshTimer = setTimeout(() => {
      if (wait < inMs) {
        this.scheduleRefresh();
        return;
      }
      void this.refreshToken();
    }, wait);
  }

  private async refreshToken(): Promise<void> {
    this.refreshTimer = undefined;
    try {
      const token = await this.getToken();
      if (token === this.currentToken) return;
      if (token === undefined) return;
      await this.request(() => ({ type: "refresh", token }), false, undefined);
      this.currentToken = token;
      this.scheduleRefresh();
    } catch (err) {
      if (err instanceof HeraldError && (err.code === "disconnected" || err.code === "closed")) return;
      // The edge will close with 4002 at expiry; reconnecting fetches a new token then.
      this.emitter.emit("$error", [
        err instanceof HeraldError ? err : new HeraldError("unavailable", `token refresh failed: ${String(err)}`),
      ]);
    }
  }

  private startHeartbeat(pingMs: number): void {
    const every = this.opts.heartbeatMs ?? pingMs;
    if (!every || every <= 0) return;
    const timeout = this.opts.heartbeatTimeoutMs ?? 10_000;
    this.heartbeatTimer = setInterval(() => {
      if (!this.canSend() || this.heartbeatDeadline !== undefined) return;
      this.sendFrame({ type: "ping" });
      this.heartbeatDeadline = setTimeout(() => {
        this.heartbeatDeadline = undefined;
        const s = this.socket;
        if (!s) return;
        this.lost({ code: 4000, reason: "no answer to ping", reconnect: true });
        try {
          s.close(4000, "no answer to ping");
        } catch {
          // Already closed.
        }
      }, timeout);
    }, every);
  }
}
