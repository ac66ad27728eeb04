mod check;
#[cfg(feature = "failpoints")]
mod crash;
mod once;
mod service;
mod types;
