//! TypeScript declarations of an event catalog (feature `ts`).
//!
//! The payload types of a [`herald_events!`](crate::herald_events) catalog derive
//! [`ts_rs::TS`]; [`TsCatalog`] collects the events and renders one `.d.ts`
//! module: an `export type` per payload type (and the types they use), and an event
//! map from event name to payload type that the browser client takes as its type
//! parameter (`new Herald<ServerEvents>(…)`).
//!
//! The map is a type alias, not an interface: the client's `EventMap` is
//! `Record<string, unknown>`, which an object type alias satisfies and an interface
//! (having no index signature) does not. Integers are rendered as `number` (ts-rs
//! would use `bigint` for 64-bit ones, which `JSON.parse` never produces).
//!
//! ```
//! use herald_publish::{herald_events, ts::TsCatalog};
//!
//! #[derive(serde::Serialize, ts_rs::TS)]
//! pub struct Order { pub id: u64, pub total_cents: i64, pub note: Option<String> }
//!
//! herald_events! { pub OrderUpdated => "order:updated": Order; }
//!
//! let dts = TsCatalog::new("ServerEvents").event::<OrderUpdated>().render();
//! assert!(dts.contains("export type Order = {"));
//! assert!(dts.contains("\"order:updated\": Order;"));
//! ```

use crate::Event;
use std::collections::BTreeMap;
use ts_rs::{Config, TS, TypeVisitor};

/// A catalog of events to render as a TypeScript module.
pub struct TsCatalog {
    map_name: String,
    cfg: Config,
    /// Event name → TypeScript type of its payload, in declaration order.
    events: Vec<(&'static str, String)>,
    /// Type name → its `export type …` declaration.
    decls: BTreeMap<String, String>,
}

impl std::fmt::Debug for TsCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TsCatalog")
            .field("map_name", &self.map_name)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

impl TsCatalog {
    /// An empty catalog whose event map is called `map_name` (e.g. `ServerEvents`).
    pub fn new(map_name: impl Into<String>) -> Self {
        Self {
            map_name: map_name.into(),
            cfg: Config::new().with_large_int("number"),
            events: Vec::new(),
            decls: BTreeMap::new(),
        }
    }

    /// Adds event `E`; its payload type (and every type it uses) is declared.
    pub fn event<E>(mut self) -> Self
    where
        E: Event,
        E::Payload: TS + 'static,
    {
        self.events
            .push((E::NAME, <E::Payload as TS>::name(&self.cfg)));
        Collect(&mut self.decls, &self.cfg).visit::<E::Payload>();
        self
    }

    /// The `.d.ts` text: a header, the type declarations sorted by name, and the
    /// event map in the order the events were added.
    pub fn render(&self) -> String {
        let mut out = String::from(
            "// Generated from the Rust event catalog by herald-publish (feature `ts`). Do not edit.\n\n",
        );
        for decl in self.decls.values() {
            out.push_str(decl);
            out.push_str("\n\n");
        }
        out.push_str(&format!(
            "/** Event name → payload: the client's event map. */\nexport type {} = {{\n",
            self.map_name
        ));
        for (name, ty) in &self.events {
            out.push_str(&format!("  {}: {ty};\n", json_string(name)));
        }
        out.push_str("};\n");
        out
    }
}

/// A TypeScript string literal for an event name (names are `[A-Za-z0-9_:.-]`).
fn json_string(s: &str) -> String {
    format!("\"{s}\"")
}

/// Visits a type and its dependencies, recording the declaration of each type
/// that has one (derived types; not primitives, `Vec`, `Option`, …).
struct Collect<'a>(&'a mut BTreeMap<String, String>, &'a Config);

impl TypeVisitor for Collect<'_> {
    fn visit<T: TS + 'static + ?Sized>(&mut self) {
        if T::output_path().is_some() {
            let ident = T::ident(self.1);
            if self.0.contains_key(&ident) {
                return;
            }
            let mut decl = String::new();
            if let Some(docs) = T::docs() {
                decl.push_str(&docs);
            }
            decl.push_str("export ");
            decl.push_str(&T::decl(self.1));
            self.0.insert(ident, decl);
        }
        T::visit_dependencies(self);
    }
}
