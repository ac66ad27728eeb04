mod once;
mod types;
