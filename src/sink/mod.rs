//! The sink: rows → Hive-partitioned Parquet files in the lake.

pub mod lake;
pub mod partition;
pub mod spill;
pub mod writer;

pub use lake::{Lake, LakeError, Published};
pub use partition::{FileName, PartitionKey};
pub use writer::{Sink, SinkError, SinkOptions, WrittenFile};
