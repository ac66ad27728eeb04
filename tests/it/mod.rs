mod once;
mod types;
mod check;
