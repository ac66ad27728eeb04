mod check;
mod once;
mod types;
