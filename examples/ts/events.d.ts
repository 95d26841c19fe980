// Generated from the Rust event catalog by herald-publish (feature `ts`). Do not edit.

/**
 * The payload of `task:assigned`, sent to the assignee's private room.
 */
export type Assignment = { 
/**
 * The task.
 */
task: number, 
/**
 * Its project.
 */
project: string, 
/**
 * Its title.
 */
title: string, };

/**
 * Payload of `member:added` and `member:removed`.
 */
export type MemberChange = { 
/**
 * The user (raw `sub`).
 */
user: string, };

/**
 * The payload of `message:new` (the message before it has a sequence).
 */
export type NewMessage = { 
/**
 * Service-assigned id.
 */
id: number, 
/**
 * The author's user id.
 */
from: string, 
/**
 * The text.
 */
text: string, };

/**
 * A task, as stored and as published in `task:created` / `task:updated`.
 */
export type Task = { 
/**
 * Service-assigned id.
 */
id: number, 
/**
 * The project; its room is `project:<project>`.
 */
project: string, 
/**
 * The title.
 */
title: string, 
/**
 * Whether it is done.
 */
done: boolean, 
/**
 * The assigned user, if any (raw `sub`).
 */
assignee: string | null, 
/**
 * Bumped by every mutation; part of the event's idempotency key.
 */
version: number, };

/**
 * The payload of `task:deleted`.
 */
export type TaskDeletedPayload = { 
/**
 * The deleted task's id.
 */
id: number, 
/**
 * The version the deletion gave it.
 */
version: number, };

/** Event name → payload: the client's event map. */
export type ServerEvents = {
  "message:new": NewMessage;
  "member:added": MemberChange;
  "member:removed": MemberChange;
  "task:created": Task;
  "task:updated": Task;
  "task:deleted": TaskDeletedPayload;
  "task:assigned": Assignment;
};
