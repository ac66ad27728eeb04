mod backfill;
mod check;
#[cfg(feature = "failpoints")]
mod crash;
mod fidelity;
mod files;
mod iceberg;
mod once;
mod s3;
mod service;
mod shapes;
mod soak;
mod tls;
mod types;
mod verify;
