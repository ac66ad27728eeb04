//! The sink: rows → Hive-partitioned Parquet files in the lake.

pub mod partition;
pub mod spill;
pub mod writer;

pub use partition::{FileName, PartitionKey};
pub use writer::{Sink, SinkError, SinkOptions, WrittenFile};
