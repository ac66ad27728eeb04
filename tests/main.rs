//! Integration tests: real PostgreSQL, the real binary, an independent reader.

mod support;

mod it;
