// Real processes for the end-to-end tests: a nats-server with JetStream and a store
// directory the test owns (so the stream survives edge restarts), `herald dev`
// pointed at it, and headless Chromium (Debian's) driven by playwright-core.
import { spawn, type ChildProcess } from "node:child_process";
import { createWriteStream, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { createServer, connect } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium, type Browser, type Page } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
/** clients/js (this file is compiled to clients/js/build/test/e2e). */
export const pkgDir = resolve(here, "../../..");
export const repoDir = resolve(pkgDir, "../..");
export const artifacts = join(pkgDir, "test-artifacts");
mkdirSync(artifacts, { recursive: true });

export const heraldBin = process.env["HERALD_BIN"] ?? join(repoDir, "target/debug/herald");
export const natsBin = process.env["HERALD_NATS_SERVER_BIN"] ?? "nats-server";
export const chromiumPath = process.env["CHROMIUM_PATH"] ?? "/usr/bin/chromium";

export function freePort(): Promise<number> {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.on("error", fail);
    s.listen(0, "127.0.0.1", () => {
      const a = s.address();
      s.close(() => (typeof a === "object" && a ? ok(a.port) : fail(new Error("no port"))));
    });
  });
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function until(what: string, ms: number, check: () => Promise<boolean>): Promise<void> {
  const end = Date.now() + ms;
  for (;;) {
    if (await check().catch(() => false)) return;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(50);
  }
}

function tcpOpen(port: number): Promise<boolean> {
  return new Promise((ok) => {
    const c = connect(port, "127.0.0.1");
    c.on("connect", () => {
      c.destroy();
      ok(true);
    });
    c.on("error", () => ok(false));
  });
}

/** A child process whose output goes to a log file under test-artifacts. */
export class Proc {
  readonly exited: Promise<number | null>;
  constructor(
    readonly name: string,
    readonly child: ChildProcess,
  ) {
    const log = createWriteStream(join(artifacts, `${name}.log`), { flags: "a" });
    child.stdout?.pipe(log);
    child.stderr?.pipe(log);
    this.exited = new Promise((ok) => child.on("exit", (code) => ok(code)));
  }

  async stop(signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill(signal);
    const t = setTimeout(() => this.child.kill("SIGKILL"), 15_000);
    await this.exited;
    clearTimeout(t);
  }
}

export class Nats {
  readonly url: string;
  private proc: Proc | undefined;
  private readonly store = mkdtempSync(join(tmpdir(), "herald-js-e2e-"));
  constructor(readonly port: number) {
    this.url = `nats://127.0.0.1:${port}`;
  }
  static async start(): Promise<Nats> {
    const n = new Nats(await freePort());
    n.proc = new Proc(
      "nats-server",
      spawn(natsBin, ["-js", "-a", "127.0.0.1", "-p", String(n.port), "-sd", n.store], { stdio: ["ignore", "pipe", "pipe"] }),
    );
    await until("nats-server", 15_000, () => tcpOpen(n.port));
    return n;
  }
  async stop(): Promise<void> {
    await this.proc?.stop();
    rmSync(this.store, { recursive: true, force: true });
  }
}

export const SECRET = "e2e-secret-for-the-js-client-tests";

/** `herald dev --nats-url …` on a fixed port (so a restarted edge has the same address). */
export class HeraldDev {
  proc: Proc | undefined;
  readonly base: string;
  private starts = 0;
  constructor(
    readonly nats: Nats,
    readonly port: number,
  ) {
    this.base = `http://127.0.0.1:${port}`;
  }
  static async start(nats: Nats): Promise<HeraldDev> {
    const h = new HeraldDev(nats, await freePort());
    await h.start();
    return h;
  }
  async start(): Promise<void> {
    this.starts++;
    this.proc = new Proc(
      `herald-dev-${this.starts}`,
      spawn(heraldBin, ["dev", "--nats-url", this.nats.url], {
        stdio: ["ignore", "pipe", "pipe"],
        env: {
          ...process.env,
          HERALD_LISTEN: `127.0.0.1:${this.port}`,
          HERALD_AUTH__HS256_SECRET: SECRET,
          RUST_LOG: process.env["RUST_LOG"] ?? "info",
        },
      }),
    );
    const proc = this.proc;
    await until(`herald dev on ${this.base}/readyz`, 30_000, async () => {
      if (proc.child.exitCode !== null) throw new Error(`herald dev exited with ${proc.child.exitCode}; see test-artifacts/${proc.name}.log`);
      const r = await fetch(`${this.base}/readyz`);
      return r.ok;
    });
  }
  async stop(signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
    await this.proc?.stop(signal);
  }
  /** Publishes a durable event as a producer would (`herald publish`). */
  async publish(room: string, event: string, data: unknown): Promise<void> {
    const p = spawn(heraldBin, ["publish", room, event, JSON.stringify(data)], {
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, HERALD_NATS__URL: this.nats.url },
    });
    let err = "";
    p.stderr.on("data", (d: Buffer) => (err += d.toString()));
    const code = await new Promise<number | null>((ok) => p.on("exit", ok));
    if (code !== 0) throw new Error(`herald publish failed (${code}): ${err}`);
  }
}

export function launchBrowser(): Promise<Browser> {
  return chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}

/** Opens the demo page in a fresh context (its own storage: another user). */
export async function openDemo(browser: Browser, url: string): Promise<Page> {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 760 } });
  const page = await ctx.newPage();
  page.on("pageerror", (e) => console.error(`[page ${url}] ${e.message}`));
  await page.goto(url);
  return page;
}

/** The texts of the stored messages the page shows, in order. */
export function shownMessages(page: Page): Promise<string[]> {
  return page.$$eval("#messages li.msg .text", (els) => els.map((e) => e.textContent ?? ""));
}

/** Waits until the page shows exactly `want` (a failure shows what it had). */
export async function expectMessages(page: Page, want: string[], ms = 30_000): Promise<void> {
  const end = Date.now() + ms;
  let got: string[] = [];
  for (;;) {
    got = await shownMessages(page);
    if (JSON.stringify(got) === JSON.stringify(want)) return;
    // Anything beyond what is expected (a duplicate, a wrong order) fails at once.
    if (got.length >= want.length) break;
    if (Date.now() > end) break;
    await sleep(100);
  }
  throw new Error(`messages on the page:\n  got  ${JSON.stringify(got)}\n  want ${JSON.stringify(want)}`);
}

export async function send(page: Page, text: string): Promise<void> {
  await page.fill("#text", text);
  await page.press("#text", "Enter");
}

export async function waitState(page: Page, state: string, ms = 30_000): Promise<void> {
  await page.waitForSelector(`#state[data-state="${state}"]`, { timeout: ms });
}
