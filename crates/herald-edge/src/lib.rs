//! The Herald edge worker as a library.
//!
//! Browsers hold a WebSocket to an edge; microservices publish to NATS
//! JetStream; the edge subscribes to NATS only for the rooms its connections are
//! in and fans each event out to them. This crate is that edge: [`config`] (what
//! can be tuned), [`auth`] (tokens), [`conn`] (one connection from upgrade to
//! close), [`router`] (rooms, interest-based subscriptions and the fan-out),
//! [`stream`] (the JetStream stream: setup, epoch, reading events back),
//! [`presence`] (this edge's share of the presence bucket, and queries),
//! [`control`] (services steering live connections), [`registry`], [`metrics`],
//! [`nats`] and [`server`] (HTTP routes and the drain). [`Edge`] ties them
//! together and is passed explicitly to every task.
#![deny(missing_docs)]

pub mod auth;
pub mod config;
pub mod conn;
pub mod control;
pub mod edge;
pub mod metrics;
pub mod nats;
pub mod presence;
pub mod registry;
pub mod router;
pub mod server;
pub mod stream;

pub use config::Config;
pub use edge::{Edge, StartError};
