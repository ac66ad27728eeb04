mod once;
