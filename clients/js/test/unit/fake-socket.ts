// A WebSocket stand-in driven by the test: it records what the client sends and
// lets the test play the edge (open, frames, close).
import type { WebSocketLike } from "../../src/herald.js";

export class FakeSocket implements WebSocketLike {
  static all: FakeSocket[] = [];
  readyState = 0;
  readonly sent: Record<string, unknown>[] = [];
  closedByClient: { code?: number; reason?: string } | undefined;
  onopen: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;

  constructor(readonly url: string) {
    FakeSocket.all.push(this);
  }

  send(data: string): void {
    if (this.readyState !== 1) throw new Error("not open");
    this.sent.push(JSON.parse(data) as Record<string, unknown>);
  }

  close(code?: number, reason?: string): void {
    this.closedByClient = { ...(code === undefined ? {} : { code }), ...(reason === undefined ? {} : { reason }) };
    this.readyState = 3;
  }

  // -- the edge's side -----------------------------------------------------

  open(): void {
    this.readyState = 1;
    this.onopen?.({});
  }

  receive(frame: Record<string, unknown>): void {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }

  /** Opens, checks the auth frame, and sends `welcome`. */
  accept(user = "alice", conn = `conn-${FakeSocket.all.length}`): void {
    this.open();
    this.receive({ type: "welcome", conn, user, edge: "edge-test", ping_ms: 25000 });
  }

  drop(code = 1006, reason = ""): void {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  /** Frames sent so far of one type. */
  ofType(type: string): Record<string, unknown>[] {
    return this.sent.filter((f) => f["type"] === type);
  }

  last(): Record<string, unknown> {
    const f = this.sent[this.sent.length - 1];
    if (!f) throw new Error("nothing sent");
    return f;
  }
}

export async function waitFor(cond: () => boolean, ms = 2000, what = "condition"): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 1));
  }
}

/** Waits for socket number `n` (1-based) to be created. */
export async function socket(n: number): Promise<FakeSocket> {
  await waitFor(() => FakeSocket.all.length >= n, 2000, `socket #${n}`);
  const s = FakeSocket.all[n - 1];
  if (!s) throw new Error("unreachable");
  return s;
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export function reset(): void {
  FakeSocket.all = [];
}
