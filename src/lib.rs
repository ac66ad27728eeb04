//! slot2lake: PostgreSQL logical replication → Hive-partitioned Parquet lake.
//!
//! ```text
//! Postgres ─pgoutput─▶ source ─▶ spool (durable segments) ─▶ flush ─▶ decode ─▶ sink (Parquet)
//!                                                                         │
//!                                     checkpoint (watermarks) ◀───────────┘ ─▶ catalog
//! ```
//! Each module is one stage; [`recovery`] decides what a start does, [`pipeline`] carries
//! out a run's steps, and [`service`] is the consumer loop `run` and `run --once` share.

pub mod aws;
pub mod catalog;
pub mod check;
pub mod checkpoint;
pub mod cli;
pub mod compact;
pub mod config;
pub mod decode;
pub mod demo;
pub mod failpoint;
pub mod flush;
pub mod iceberg;
pub mod lake;
pub mod lsn;
pub mod pipeline;
pub mod recovery;
pub mod retry;
pub mod service;
pub mod sink;
pub mod source;
pub mod spool;
pub mod status;
pub mod telemetry;
pub mod verify;
