//! A tasks service that publishes on every mutation of its data.
//!
//! The service owns an in-memory table of tasks, grouped by project. Its own API is
//! plain NATS request/reply (`tasks.create`, `tasks.update`, `tasks.delete`, JSON in
//! and out) — Herald is not involved in the write path. After each mutation it
//! publishes a typed event to the project's room (`project:<id>`):
//! `task:created`, `task:updated` or `task:deleted`.
//!
//! - **Idempotency key from the mutation**: every mutation bumps the task's version,
//!   and the event's `Nats-Msg-Id` is `task-<id>-v<version>`. Publishing the same
//!   mutation again (a retry after a timeout, or [`Tasks::replay`] after a restart)
//!   is stored and delivered once.
//! - **Acknowledged for data, detached for notices**: the room event is an acked
//!   emit, and the API replies only after JetStream stored it, so a caller that reads
//!   the reply knows subscribers will get the change. The `task:assigned` notice to
//!   the assignee's private room is fire-and-forget: it never delays the reply, and
//!   a failure shows in [`Publisher::detached_stats`] and the logs.
//! - **Order**: mutations are applied and published one at a time (an async mutex
//!   is held across both), so the room's stream order is the mutation order.

use herald_protocol::{Room, UserId};
use herald_publish::{EmitOptions, Event as _, Publisher, herald_events};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A task, as stored and as published in `task:created` / `task:updated`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ts_rs::TS)]
pub struct Task {
    /// Service-assigned id.
    pub id: u64,
    /// The project; its room is `project:<project>`.
    pub project: String,
    /// The title.
    pub title: String,
    /// Whether it is done.
    pub done: bool,
    /// The assigned user, if any (raw `sub`).
    pub assignee: Option<String>,
    /// Bumped by every mutation; part of the event's idempotency key.
    pub version: u64,
}

/// The payload of `task:deleted`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ts_rs::TS)]
pub struct TaskDeletedPayload {
    /// The deleted task's id.
    pub id: u64,
    /// The version the deletion gave it.
    pub version: u64,
}

/// The payload of `task:assigned`, sent to the assignee's private room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ts_rs::TS)]
pub struct Assignment {
    /// The task.
    pub task: u64,
    /// Its project.
    pub project: String,
    /// Its title.
    pub title: String,
}

herald_events! {
    /// A task was created (to `project:<id>`).
    pub TaskCreated => "task:created": Task;
    /// A task changed (to `project:<id>`).
    pub TaskUpdated => "task:updated": Task;
    /// A task was deleted (to `project:<id>`).
    pub TaskDeleted => "task:deleted": TaskDeletedPayload;
    /// A task was assigned to you (to `user:<you>`, fire-and-forget).
    pub TaskAssigned => "task:assigned": Assignment;
}

/// `tasks.create`: a new task.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateTask {
    /// The project (a room id: `[A-Za-z0-9_-]`, …).
    pub project: String,
    /// The title.
    pub title: String,
    /// The assignee, if any.
    #[serde(default)]
    pub assignee: Option<String>,
}

/// `tasks.update`: change some fields of a task.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UpdateTask {
    /// The task.
    pub id: u64,
    /// A new title.
    #[serde(default)]
    pub title: Option<String>,
    /// Mark done or not done.
    #[serde(default)]
    pub done: Option<bool>,
    /// A new assignee.
    #[serde(default)]
    pub assignee: Option<String>,
}

/// `tasks.delete`: delete a task.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeleteTask {
    /// The task.
    pub id: u64,
}

/// Why a mutation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskError {
    /// The request is invalid (the message says why).
    BadRequest(String),
    /// No task has this id.
    NotFound(u64),
    /// The change is stored but its event could not be published; [`Tasks::replay`]
    /// publishes it later (with the same key, so never twice).
    NotPublished(String),
}

impl std::fmt::Display for TaskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BadRequest(m) => write!(f, "bad request: {m}"),
            Self::NotFound(id) => write!(f, "no task {id}"),
            Self::NotPublished(m) => write!(f, "stored, event not yet published: {m}"),
        }
    }
}

impl std::error::Error for TaskError {}

/// One published (or to-be-published) change: what [`Tasks::replay`] sends again.
#[derive(Debug, Clone)]
enum Change {
    Upsert {
        created: bool,
        task: Task,
    },
    Deleted {
        project: String,
        id: u64,
        version: u64,
    },
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    tasks: BTreeMap<u64, Task>,
    /// Every change, in order (a real service would keep an outbox table).
    log: Vec<Change>,
}

/// The tasks service: the table and the publisher.
#[derive(Debug, Clone)]
pub struct Tasks {
    state: Arc<tokio::sync::Mutex<State>>,
    publisher: Publisher,
}

fn project_room(project: &str) -> Result<Room, TaskError> {
    Room::from_parts("project", project).map_err(|e| TaskError::BadRequest(e.to_string()))
}

fn check_title(title: &str) -> Result<String, TaskError> {
    let t = title.trim();
    if t.is_empty() || t.chars().count() > 200 {
        return Err(TaskError::BadRequest(
            "title must be 1..=200 characters".into(),
        ));
    }
    Ok(t.to_owned())
}

fn check_user(user: Option<&str>) -> Result<Option<UserId>, TaskError> {
    user.map(|u| UserId::new(u).map_err(|e| TaskError::BadRequest(e.to_string())))
        .transpose()
}

impl Tasks {
    /// An empty table publishing through `publisher`.
    pub fn new(publisher: Publisher) -> Self {
        Self {
            state: Arc::default(),
            publisher,
        }
    }

    /// The publisher (for its [`detached_stats`](Publisher::detached_stats)).
    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// The task with `id`, if any.
    pub async fn get(&self, id: u64) -> Option<Task> {
        self.state.lock().await.tasks.get(&id).cloned()
    }

    /// Creates a task; publishes `task:created` (and `task:assigned` to the assignee).
    pub async fn create(&self, req: CreateTask) -> Result<Task, TaskError> {
        let room = project_room(&req.project)?;
        let title = check_title(&req.title)?;
        let assignee = check_user(req.assignee.as_deref())?;
        let mut s = self.state.lock().await;
        s.next_id += 1;
        let task = Task {
            id: s.next_id,
            project: req.project,
            title,
            done: false,
            assignee: req.assignee,
            version: 1,
        };
        s.tasks.insert(task.id, task.clone());
        let change = Change::Upsert {
            created: true,
            task: task.clone(),
        };
        s.log.push(change.clone());
        self.publish(&room, &change).await?;
        if let Some(user) = assignee {
            self.notify(&user, &task);
        }
        Ok(task)
    }

    /// Updates a task; publishes `task:updated` (and `task:assigned` when the
    /// assignee changed).
    pub async fn update(&self, req: UpdateTask) -> Result<Task, TaskError> {
        let title = req.title.as_deref().map(check_title).transpose()?;
        let assignee = check_user(req.assignee.as_deref())?;
        let mut s = self.state.lock().await;
        let task = s
            .tasks
            .get_mut(&req.id)
            .ok_or(TaskError::NotFound(req.id))?;
        let reassigned = req.assignee.is_some() && req.assignee != task.assignee;
        if let Some(t) = title {
            task.title = t;
        }
        if let Some(d) = req.done {
            task.done = d;
        }
        if req.assignee.is_some() {
            task.assignee = req.assignee;
        }
        task.version += 1;
        let task = task.clone();
        let room = project_room(&task.project)?;
        let change = Change::Upsert {
            created: false,
            task: task.clone(),
        };
        s.log.push(change.clone());
        self.publish(&room, &change).await?;
        if let (true, Some(user)) = (reassigned, assignee) {
            self.notify(&user, &task);
        }
        Ok(task)
    }

    /// Deletes a task; publishes `task:deleted`.
    pub async fn delete(&self, req: DeleteTask) -> Result<TaskDeletedPayload, TaskError> {
        let mut s = self.state.lock().await;
        let task = s.tasks.remove(&req.id).ok_or(TaskError::NotFound(req.id))?;
        let change = Change::Deleted {
            project: task.project.clone(),
            id: task.id,
            version: task.version + 1,
        };
        s.log.push(change.clone());
        self.publish(&project_room(&task.project)?, &change).await?;
        Ok(TaskDeletedPayload {
            id: task.id,
            version: task.version + 1,
        })
    }

    /// Publishes every change again, in order, with the same keys: what a service
    /// does after a restart when it cannot tell which events went out. Events
    /// already stored within the duplicate window are not delivered again. Returns
    /// how many were duplicates.
    pub async fn replay(&self) -> Result<usize, TaskError> {
        let s = self.state.lock().await;
        let mut duplicates = 0;
        for change in &s.log {
            let project = match change {
                Change::Upsert { task, .. } => &task.project,
                Change::Deleted { project, .. } => project,
            };
            if self.publish(&project_room(project)?, change).await? {
                duplicates += 1;
            }
        }
        Ok(duplicates)
    }

    /// Publishes one change, acknowledged; `Ok(true)` when it was a duplicate.
    async fn publish(&self, room: &Room, change: &Change) -> Result<bool, TaskError> {
        let ack = match change {
            Change::Upsert { created, task } => {
                let opts = EmitOptions::new().msg_id(format!("task-{}-v{}", task.id, task.version));
                if *created {
                    self.publisher
                        .send_with::<TaskCreated>(room, task, &opts)
                        .await
                } else {
                    self.publisher
                        .send_with::<TaskUpdated>(room, task, &opts)
                        .await
                }
            }
            Change::Deleted { id, version, .. } => {
                let opts = EmitOptions::new().msg_id(format!("task-{id}-v{version}"));
                let payload = TaskDeletedPayload {
                    id: *id,
                    version: *version,
                };
                self.publisher
                    .send_with::<TaskDeleted>(room, &payload, &opts)
                    .await
            }
        };
        match ack {
            Ok(ack) => Ok(ack.duplicate),
            Err(e) => {
                tracing::warn!(error = %e, "task event not published");
                Err(TaskError::NotPublished(e.to_string()))
            }
        }
    }

    /// The assignee's notice: fire-and-forget, keyed like the change.
    fn notify(&self, user: &UserId, task: &Task) {
        let payload = Assignment {
            task: task.id,
            project: task.project.clone(),
            title: task.title.clone(),
        };
        let opts =
            EmitOptions::new().msg_id(format!("task-{}-v{}-assigned", task.id, task.version));
        self.publisher.emit_detached_with(
            &Room::for_user(user),
            TaskAssigned::NAME,
            &payload,
            opts,
        );
    }

    /// Answers `<api>.create`, `<api>.update` and `<api>.delete` (queue group
    /// `tasks`). Replies `{"ok": …}` or `{"error": "…"}`.
    pub async fn serve(
        &self,
        client: async_nats::Client,
        api: &str,
    ) -> herald_publish::Result<tokio::task::JoinHandle<()>> {
        use futures::StreamExt as _;
        let mut sub = client
            .queue_subscribe(format!("{api}.*"), "tasks".into())
            .await
            .map_err(|e| {
                herald_publish::Error::new(herald_publish::ErrorKind::Subscribe, e.to_string())
            })?;
        herald_publish::round_trip(&client).await?;
        let this = self.clone();
        Ok(tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let Some(reply) = msg.reply.clone() else {
                    continue;
                };
                let op = msg
                    .subject
                    .rsplit('.')
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let out = this.handle(&op, &msg.payload).await;
                let body = match out {
                    Ok(v) => serde_json::json!({ "ok": v }),
                    Err(e) => serde_json::json!({ "error": e.to_string() }),
                };
                if let Err(e) = client.publish(reply, body.to_string().into()).await {
                    tracing::warn!(error = %e, "tasks: reply not sent");
                }
            }
        }))
    }

    async fn handle(&self, op: &str, body: &[u8]) -> Result<serde_json::Value, TaskError> {
        fn parse<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, TaskError> {
            serde_json::from_slice(b).map_err(|e| TaskError::BadRequest(e.to_string()))
        }
        let v = match op {
            "create" => serde_json::to_value(self.create(parse(body)?).await?),
            "update" => serde_json::to_value(self.update(parse(body)?).await?),
            "delete" => serde_json::to_value(self.delete(parse(body)?).await?),
            other => {
                return Err(TaskError::BadRequest(format!(
                    "unknown operation `{other}`"
                )));
            }
        };
        v.map_err(|e| TaskError::BadRequest(e.to_string()))
    }
}
