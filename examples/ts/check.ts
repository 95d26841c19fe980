// Type-checks the generated catalog (events.d.ts) against the browser client:
// `scripts/test-js.sh` compiles this file with tsc (it is never run). Each line
// marked with a ts-expect-error directive must fail to compile.
import { Herald } from "../../clients/js/src/herald.js";
import type { ServerEvents, Task } from "./events.js";

const herald = new Herald<ServerEvents>({ url: "ws://localhost:8080/ws", token: "t" });
const project = herald.room("project:apollo");
project.on("task:updated", (t: Task) => void t.title.toUpperCase());
project.on("task:deleted", (d) => void (d.id + d.version));
project.on("task:created", (t) => void (t.assignee ?? "nobody").length);
herald.room("user:bob").on("task:assigned", (a) => void a.project.length);
herald.room("channel:1").on("message:new", (m) => void m.text.length);
// @ts-expect-error: `done` is a boolean
project.on("task:created", (t: { done: string }) => void t);
// @ts-expect-error: not an event of the catalog
project.on("task:archived", () => {});
// @ts-expect-error: `id` is a number
project.on("task:deleted", (d) => void d.id.toUpperCase());
herald.close();
