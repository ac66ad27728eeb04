mod backfill;
mod check;
#[cfg(feature = "failpoints")]
mod crash;
mod once;
mod s3;
mod service;
mod types;
