//! The table shapes PostgreSQL's own logical replication tests exercise: key changes,
//! TOASTed keys, keyless tables, FULL identity with a key, TOAST without FULL identity,
//! partitioned tables, publications with column lists and row filters, generated
//! columns. Each is checked three ways against the source: the independent reader's
//! latest state (DuckDB), slot2lake's DuckDB view (`catalog views`), and `verify`.

use std::path::Path;

use crate::support::{database, run_once, with_config, Lake, TestDb};

/// Every reading of the lake equals the source for `table`.
async fn assert_all_match(lake: &Lake, config: &Path, db: &TestDb, table: &str, key: &str) {
    let folder = table.rsplit('.').next().expect("table name");
    lake.assert_matches(db, table, folder, key);
    lake.assert_view_matches(config, db, table, folder, key)
        .await;
    lake.assert_verified(config, folder).await;
    if !key.is_empty() {
        let s = lake.summary(folder, key);
        assert_eq!(s["null_keys"], 0, "a row with a NULL key: {s}");
    }
}

fn tables(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("[[tables]]\nname = \"{n}\"\n"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_that_change_the_key_delete_the_old_key() {
    let db = database("key_changes").await;
    db.exec(
        "CREATE TABLE pk (a int PRIMARY KEY, b text);
         INSERT INTO pk SELECT i, 'v' || i FROM generate_series(1, 20) i;
         CREATE TABLE ix (a int NOT NULL, b text, c int);
         CREATE UNIQUE INDEX ix_a ON ix (a);
         ALTER TABLE ix REPLICA IDENTITY USING INDEX ix_a;
         INSERT INTO ix SELECT i, 'v' || i, i FROM generate_series(1, 20) i;
         CREATE TABLE comp (k1 int, k2 text, v int, PRIMARY KEY (k1, k2));
         INSERT INTO comp SELECT i % 4, 'k' || i, i FROM generate_series(1, 20) i;
         CREATE TABLE arr (k int[] PRIMARY KEY, v text);
         INSERT INTO arr SELECT ARRAY[i, i + 1], 'v' || i FROM generate_series(1, 10) i;",
    )
    .await;
    let lake = Lake::new();
    let config = lake.config(
        &db,
        &tables(&["public.pk", "public.ix", "public.comp", "public.arr"]),
    );
    run_once(&config).await;
    db.exec(
        "UPDATE pk SET a = -a;
         UPDATE ix SET a = -a;
         UPDATE comp SET k2 = k2 || 'x' WHERE k1 = 1;
         UPDATE arr SET k = k || 0 WHERE k[1] <= 5;
         BEGIN;
           -- several key changes in one transaction, one of them changed back
           UPDATE pk SET a = 1000 WHERE a = -1;
           UPDATE pk SET a = 1001 WHERE a = 1000;
           UPDATE pk SET a = 2, b = 'back' WHERE a = -2;
           UPDATE pk SET a = -2 WHERE a = 2;
           INSERT INTO pk VALUES (1, 'reused old key');
         COMMIT;
         DELETE FROM ix WHERE a = -3;",
    )
    .await;
    run_once(&config).await;
    assert_all_match(&lake, &config, &db, "public.pk", "a").await;
    assert_all_match(&lake, &config, &db, "public.ix", "a").await;
    assert_all_match(&lake, &config, &db, "public.comp", "k1,k2").await;
    assert_all_match(&lake, &config, &db, "public.arr", "k").await;
    // The old key's DELETE comes first in the transaction's order; no version shares one.
    let s = lake.summary("pk", "a");
    assert_eq!(s["duplicates"], 0, "{s}");
    assert_eq!(
        lake.query_i64(
            "pk",
            "SELECT count(*) - count(DISTINCT (change_lsn, change_seq)) FROM {t}"
        ),
        0
    );
}

/// A key value too big to stay inline: PostgreSQL sends it as unchanged in the new tuple
/// and in full in the old key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toasted_keys_are_never_written_as_null() {
    let db = database("toast_keys").await;
    let big =
        "(SELECT string_agg(md5(i::text || random()::text), '') FROM generate_series(1, 80) i)";
    db.exec(&format!(
        "CREATE TABLE tk (k text PRIMARY KEY, other int);
         ALTER TABLE tk ALTER COLUMN k SET STORAGE EXTERNAL;
         INSERT INTO tk SELECT 'key' || i || {big}, 0 FROM generate_series(1, 3) i;
         CREATE TABLE tc (id int, bigkey text, other int, PRIMARY KEY (id, bigkey));
         ALTER TABLE tc ALTER COLUMN bigkey SET STORAGE EXTERNAL;
         INSERT INTO tc SELECT i, 'key' || i || {big}, 0 FROM generate_series(1, 3) i;"
    ))
    .await;
    let lake = Lake::new();
    let config = lake.config(&db, &tables(&["public.tk", "public.tc"]));
    run_once(&config).await;
    db.exec(
        "UPDATE tk SET other = 1;
         UPDATE tc SET other = 2;
         UPDATE tc SET id = id + 10 WHERE id = 1;
         DELETE FROM tk WHERE k LIKE 'key2%';
         DELETE FROM tc WHERE id = 2;",
    )
    .await;
    run_once(&config).await;
    assert_all_match(&lake, &config, &db, "public.tk", "k").await;
    assert_all_match(&lake, &config, &db, "public.tc", "id,bigkey").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_tables_are_multisets_with_duplicates() {
    let db = database("keyless").await;
    db.exec(
        "CREATE TABLE k (a int, b text);
         ALTER TABLE k REPLICA IDENTITY FULL;
         INSERT INTO k VALUES (1, 'x'), (1, 'x'), (2, 'y'), (3, NULL), (3, NULL), (3, NULL);",
    )
    .await;
    let lake = Lake::new();
    let config = lake.config(&db, &tables(&["public.k"]));
    run_once(&config).await;
    db.exec(
        "UPDATE k SET a = a * a;
         INSERT INTO k VALUES (1, 'x'), (9, NULL);
         DELETE FROM k WHERE ctid IN (SELECT ctid FROM k WHERE a = 9 LIMIT 1);
         UPDATE k SET b = 'z' WHERE a = 4;",
    )
    .await;
    run_once(&config).await;
    assert_all_match(&lake, &config, &db, "public.k", "").await;
    // A column with a default: PostgreSQL reads it as 0 in rows written before, which
    // the lake holds without it; slot2lake takes a new snapshot of the table.
    db.exec(
        "ALTER TABLE k ADD COLUMN c int DEFAULT 0;
         DELETE FROM k WHERE a = 4;
         UPDATE k SET a = a + 1 WHERE a = 1;
         INSERT INTO k VALUES (7, 'new', 5);",
    )
    .await;
    let run = run_once(&config).await;
    assert!(
        run.stderr.contains("added to a table without a key"),
        "{}",
        run.stderr
    );
    assert_all_match(&lake, &config, &db, "public.k", "").await;
    // Every row version has its own (change_lsn, change_seq), the old version's DELETE too.
    assert_eq!(
        lake.query_i64(
            "k",
            "SELECT count(*) - count(DISTINCT (change_lsn, change_seq)) FROM {t} WHERE change_type <> 'SNAPSHOT'"
        ),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_identity_with_a_primary_key_keeps_one_row_per_key() {
    let db = database("full_pk").await;
    db.exec(
        "CREATE TABLE f (id int PRIMARY KEY, n int, note text);
         ALTER TABLE f REPLICA IDENTITY FULL;
         INSERT INTO f SELECT i, 0, 'n' || i FROM generate_series(1, 10) i;",
    )
    .await;
    let lake = Lake::new();
    let config = lake.config(&db, &tables(&["public.f"]));
    run_once(&config).await;
    db.exec(
        "UPDATE f SET n = n + 1 WHERE id = 1; UPDATE f SET n = n + 1 WHERE id = 1;
         UPDATE f SET n = n + 1 WHERE id = 1; UPDATE f SET id = 100 WHERE id = 2;
         DELETE FROM f WHERE id = 3;",
    )
    .await;
    run_once(&config).await;
    assert_all_match(&lake, &config, &db, "public.f", "id").await;
}

/// Without REPLICA IDENTITY FULL an UPDATE does not send a TOASTed value it left alone:
/// the row names it in `unchanged_columns` (never a NULL presented as the value), and
/// every latest-state reading takes the previous version's value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_toast_without_full_identity_is_resolved_not_nulled() {
    let db = database("toast_default").await;
    let big =
        "(SELECT string_agg(md5(i::text || random()::text), '') FROM generate_series(1, 4000) i)";
    db.exec(&format!(
        "CREATE TABLE docs (id int PRIMARY KEY, n int, body text, meta jsonb);
         INSERT INTO docs SELECT i, 0, 'doc' || i || {big}, jsonb_build_object('i', i, 'pad', {big})
           FROM generate_series(1, 4) i;"
    ))
    .await;
    let lake = Lake::new();
    let config = lake.config(&db, &tables(&["public.docs"]));
    run_once(&config).await;
    db.exec(&format!(
        "UPDATE docs SET n = n + 1;
         UPDATE docs SET n = n + 1 WHERE id <= 2;
         UPDATE docs SET body = 'rewritten' || {big} WHERE id = 2;
         UPDATE docs SET n = n + 1 WHERE id = 2;
         UPDATE docs SET body = NULL WHERE id = 3;
         UPDATE docs SET n = 9 WHERE id = 3;"
    ))
    .await;
    run_once(&config).await;
    assert_all_match(&lake, &config, &db, "public.docs", "id").await;
    // The changelog says what it does not know instead of writing NULL as a value.
    assert_eq!(
        lake.query_i64(
            "docs",
            "SELECT count(*) FROM {t} WHERE change_type = 'UPDATE' AND list_contains(unchanged_columns, 'body') AND body IS NULL"
        ),
        7
    );
    assert_eq!(
        lake.query_i64(
            "docs",
            "SELECT count(*) FROM {t} WHERE change_type = 'UPDATE' AND body IS NULL AND NOT coalesce(list_contains(unchanged_columns, 'body'), false)"
        ),
        2,
        "only the UPDATEs that set body to NULL carry a NULL body"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_tables_are_configured_by_their_parent() {
    let db = database("partitioned").await;
    db.exec(
        "CREATE TABLE ev (id int, d date, v text, PRIMARY KEY (id, d)) PARTITION BY RANGE (d);
         CREATE TABLE ev_2024 PARTITION OF ev FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
         CREATE TABLE ev_2025 PARTITION OF ev FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
         CREATE TABLE ev_rest PARTITION OF ev DEFAULT;
         INSERT INTO ev SELECT i, date '2024-06-01' + (i * 7), 'v' || i FROM generate_series(1, 120) i;
         CREATE TABLE lst (id int PRIMARY KEY, region text NOT NULL, v int) PARTITION BY LIST (id);
         CREATE TABLE lst_a PARTITION OF lst FOR VALUES IN (1, 2, 3);
         CREATE TABLE lst_b PARTITION OF lst DEFAULT;
         INSERT INTO lst SELECT i, 'r' || (i % 3), i FROM generate_series(1, 30) i;",
    )
    .await;
    let lake = Lake::new();
    let config = lake.config(
        &db,
        "[[tables]]\nname = \"public.ev\"\npartition_by = \"d\"\n[[tables]]\nname = \"public.lst\"\n",
    );
    run_once(&config).await;
    // The publication slot2lake created publishes partitions as their root.
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) FROM pg_publication WHERE pubname = '{}' AND pubviaroot",
            db.name
        ))
        .await,
        1
    );
    db.exec(
        "UPDATE ev SET v = 'in place' WHERE id <= 5;
         UPDATE ev SET d = date '2025-03-01' WHERE id = 6;          -- moves 2024 -> 2025
         UPDATE ev SET d = date '2024-02-01' WHERE id = 6;          -- and back
         UPDATE ev SET d = date '2030-01-01' WHERE id IN (7, 8);    -- into the default partition
         UPDATE ev_2024 SET v = 'via leaf' WHERE id = 9;
         DELETE FROM ev_2025 WHERE id % 10 = 0;
         UPDATE lst SET id = id + 100 WHERE id <= 3;                -- key change across partitions
         TRUNCATE lst;
         INSERT INTO lst VALUES (1, 'again', 1), (500, 'new', 5);",
    )
    .await;
    // Every later run works (it used to fail: "already member of publication").
    run_once(&config).await;
    run_once(&config).await;
    let check = with_config(&["check"], &config).await;
    assert_eq!(check.code, 0, "{}{}", check.stdout, check.stderr);
    assert_all_match(&lake, &config, &db, "public.ev", "id,d").await;
    assert_all_match(&lake, &config, &db, "public.lst", "id").await;
    // Rows file under their date's partition folder, whichever leaf held them.
    assert_eq!(
        lake.query_i64(
            "ev",
            "SELECT count(*) FROM {t} WHERE change_type <> 'DELETE' AND (year::int <> year(d) OR month::int <> month(d) OR day::int <> day(d))"
        ),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_without_publish_via_partition_root_is_refused_with_the_fix() {
    let db = database("via_root").await;
    db.exec(&format!(
        "CREATE TABLE ev (id int, d date, PRIMARY KEY (id, d)) PARTITION BY RANGE (d);
         CREATE TABLE ev_all PARTITION OF ev DEFAULT;
         INSERT INTO ev VALUES (1, '2025-01-01');
         CREATE PUBLICATION {} FOR TABLE ev;",
        db.name
    ))
    .await;
    let lake = Lake::new();
    let config = lake.config(&db, &tables(&["public.ev"]));
    let fix = format!(
        "ALTER PUBLICATION \"{}\" SET (publish_via_partition_root = true);",
        db.name
    );
    let check = with_config(&["check"], &config).await;
    assert_eq!(check.code, 1, "{}{}", check.stdout, check.stderr);
    assert!(check.stdout.contains(&fix), "{}", check.stdout);
    let run = with_config(&["run", "--once"], &config).await;
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(run.stderr.contains(&fix), "{}", run.stderr);
    assert!(!lake.root().join("ev").exists(), "nothing may be written");
    db.exec(&fix).await;
    run_once(&config).await;
    lake.assert_matches(&db, "public.ev", "ev", "id,d");
}

/// A publication the user made with a column list and a row filter (PostgreSQL 15+):
/// the snapshot copies exactly what the stream publishes, so excluded columns (PII) and
/// rows never reach the lake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn column_lists_and_row_filters_bound_the_snapshot_too() {
    let db = database("pub_filter").await;
    db.exec(&format!(
        "CREATE TABLE people (id int PRIMARY KEY, name text, ssn text, score int);
         INSERT INTO people SELECT i, 'p' || i, 'ssn' || i, i FROM generate_series(1, 40) i;
         CREATE PUBLICATION {} FOR TABLE people (id, name, score) WHERE (id > 10);
         CREATE VIEW people_published AS SELECT id, name, score FROM people WHERE id > 10;",
        db.name
    ))
    .await;
    let lake = Lake::new();
    let config = lake.config(&db, &tables(&["public.people"]));
    run_once(&config).await;
    db.exec(
        "UPDATE people SET score = score * 2;
         UPDATE people SET id = id + 100 WHERE id = 5;   -- into the filter: an INSERT
         UPDATE people SET id = id - 10 WHERE id = 15;   -- out of it: a DELETE
         INSERT INTO people VALUES (0, 'low', 'x', 1), (300, 'high', 'y', 2);",
    )
    .await;
    run_once(&config).await;
    lake.assert_matches(&db, "public.people_published", "people", "id");
    let s = lake.summary("people", "id");
    assert!(s["types"].get("ssn").is_none(), "{s}");
    assert_eq!(
        lake.query_i64("people", "SELECT count(*) FROM {t} WHERE id <= 10"),
        0,
        "a row outside the filter reached the lake"
    );
    lake.assert_verified(&config, "people").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_columns_are_published_from_postgresql_18_and_listed_before() {
    let db = database("generated").await;
    db.exec(
        "CREATE TABLE g (id int PRIMARY KEY, a int, twice int GENERATED ALWAYS AS (a * 2) STORED);
         INSERT INTO g (id, a) SELECT i, i FROM generate_series(1, 10) i;",
    )
    .await;
    let version = db
        .count("SELECT current_setting('server_version_num')::bigint")
        .await;
    let lake = Lake::new();
    let config = lake.config(&db, &tables(&["public.g"]));
    let check = with_config(&["check"], &config).await;
    run_once(&config).await;
    db.exec("UPDATE g SET a = a + 100 WHERE id <= 3;").await;
    run_once(&config).await;
    let s = lake.summary("g", "id");
    if version >= 180000 {
        assert_eq!(s["types"]["twice"], "int32", "{s}");
        lake.assert_matches(&db, "public.g", "g", "id");
        lake.assert_verified(&config, "g").await;
    } else {
        assert!(s["types"].get("twice").is_none(), "{s}");
        assert!(
            check.stdout.contains("generated column") && check.stdout.contains("twice"),
            "check must name the generated column it cannot publish:\n{}",
            check.stdout
        );
        db.exec("CREATE VIEW g_published AS SELECT id, a FROM g;")
            .await;
        lake.assert_matches(&db, "public.g_published", "g", "id");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_of_an_unconfigured_published_table_are_reported() {
    let db = database("unplaced").await;
    db.exec(&format!(
        "CREATE TABLE kept (id int PRIMARY KEY);
         CREATE TABLE other (id int PRIMARY KEY);
         CREATE PUBLICATION {} FOR TABLE kept, other;",
        db.name
    ))
    .await;
    let lake = Lake::new();
    let config = lake.config(&db, &tables(&["public.kept"]));
    run_once(&config).await;
    db.exec("INSERT INTO kept VALUES (1); INSERT INTO other SELECT generate_series(1, 5);")
        .await;
    let run = run_once(&config).await;
    assert!(
        run.stderr.contains("public.other"),
        "the skipped relation must be named:\n{}",
        run.stderr
    );
    let status = with_config(&["status", "--json"], &config).await;
    let status: serde_json::Value = serde_json::from_str(&status.stdout).expect("status json");
    assert_eq!(
        status["unplaced_changes"]["relations"]["public.other"], 5,
        "{status}"
    );
    lake.assert_matches(&db, "public.kept", "kept", "id");
}

/// PostgreSQL sends no rows for ATTACH, DETACH or DROP PARTITION: slot2lake notices the
/// partitions changed and copies what the stream could not carry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attached_and_detached_partitions_land_right() {
    let db = database("attach_detach").await;
    db.exec(
        "CREATE TABLE ev (id int, d date, v text, PRIMARY KEY (id, d)) PARTITION BY RANGE (d);
         CREATE TABLE ev_2024 PARTITION OF ev FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
         CREATE TABLE ev_2025 PARTITION OF ev FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
         INSERT INTO ev SELECT i, date '2024-01-01' + i * 3, 'v' || i FROM generate_series(1, 200) i;",
    )
    .await;
    let lake = Lake::new();
    let config = lake.config(
        &db,
        "[[tables]]\nname = \"public.ev\"\npartition_by = \"d\"\n",
    );
    run_once(&config).await;
    // A table with rows of its own attached; a new empty partition filled through the parent.
    db.exec(
        "CREATE TABLE ev_2026 (LIKE ev INCLUDING ALL);
         INSERT INTO ev_2026 SELECT 1000 + i, date '2026-01-01' + i, 'attached' FROM generate_series(1, 30) i;
         ALTER TABLE ev ATTACH PARTITION ev_2026 FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
         UPDATE ev SET v = 'changed after attach' WHERE id = 1001;
         CREATE TABLE ev_2027 PARTITION OF ev FOR VALUES FROM ('2027-01-01') TO ('2028-01-01');
         INSERT INTO ev VALUES (5000, '2027-05-05', 'through the parent');
         UPDATE ev SET v = 'x' WHERE id = 3;",
    )
    .await;
    let run = run_once(&config).await;
    assert!(run.stderr.contains("partitions changed"), "{}", run.stderr);
    assert_all_match(&lake, &config, &db, "public.ev", "id,d").await;
    // A partition detached (its rows leave the table without a DELETE) and one dropped.
    db.exec(
        "ALTER TABLE ev DETACH PARTITION ev_2024;
         DROP TABLE ev_2027;
         UPDATE ev SET v = 'y' WHERE id = 150;",
    )
    .await;
    run_once(&config).await;
    assert_all_match(&lake, &config, &db, "public.ev", "id,d").await;
    // Nothing changed since: no new snapshot.
    let truncates = lake.query_i64(
        "ev",
        "SELECT count(*) FROM {t} WHERE change_type = 'TRUNCATE'",
    );
    run_once(&config).await;
    assert_eq!(
        lake.query_i64(
            "ev",
            "SELECT count(*) FROM {t} WHERE change_type = 'TRUNCATE'"
        ),
        truncates
    );
}
