//! Fidelity while tables change: schema changes mid-stream, renamed tables, TOASTed
//! values, tables without a primary key, and names that collide with slot2lake's columns.

use crate::support::{
    database, edit_config, free_addr, run_once, with_config, Consumer, Lake, TestDb,
};

async fn flush(config: &std::path::Path) {
    let run = with_config(&["flush"], config).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_changes_while_streaming_keep_the_lake_readable() {
    let db = database("schema_changes").await;
    db.exec(
        "CREATE TABLE items (id int PRIMARY KEY, name text, qty int, old_col text);
         INSERT INTO items SELECT i, 'n' || i, i, 'o' || i FROM generate_series(1, 20) i;",
    )
    .await;
    let lake = Lake::new();
    let admin = free_addr();
    let config = lake.consumer_config(&db, "[[tables]]\nname = \"public.items\"\n", &admin);
    let consumer = Consumer::start(&config, &admin).await;
    db.exec(
        "UPDATE items SET qty = qty + 1 WHERE id <= 5;
         ALTER TABLE items ADD COLUMN added numeric(8,2);
         INSERT INTO items (id, name, qty, added) VALUES (100, 'after add', 1, 1.25);
         ALTER TABLE items DROP COLUMN old_col;
         ALTER TABLE items RENAME COLUMN name TO title;
         ALTER TABLE items ALTER COLUMN qty TYPE bigint;
         UPDATE items SET qty = qty * 1000000000, added = coalesce(added, 0) + id;
         ALTER TABLE items RENAME TO goods;
         INSERT INTO goods (id, title, qty) VALUES (200, 'after rename', 2);
         DELETE FROM goods WHERE id = 3;",
    )
    .await;
    flush(&config).await;
    assert!(
        consumer.log().contains("table was renamed"),
        "{}",
        consumer.log()
    );
    assert_eq!(consumer.stop().await, 0);
    // Still in folder items; the latest version of every row has the new shape.
    lake.assert_matches(&db, "public.goods", "items", "id");
    let s = lake.summary("items", "id");
    assert_eq!(s["duplicates"], 0, "{s}");
    let newest = &s["types"];
    assert_eq!(newest["qty"], "int64", "{s}");
    assert_eq!(newest["added"], "decimal128(8, 2)", "{s}");
    assert!(
        newest.get("old_col").is_none() && newest.get("name").is_none(),
        "{s}"
    );
    // Rows written before the change keep their old columns; union_by_name reads both.
    // 20 snapshot rows and the 5 updates made before the drop.
    assert_eq!(
        lake.query_i64(
            "items",
            "SELECT count(*) FROM {t} WHERE old_col IS NOT NULL"
        ),
        25
    );
    assert_eq!(
        lake.query_i64(
            "items",
            "SELECT count(*) FROM {t} WHERE added IS NULL AND change_type = 'SNAPSHOT'"
        ),
        20
    );
    // After the rename the config names the new table and keeps the folder.
    edit_config(&config, |t| {
        t.replace(
            "name = \"public.items\"",
            "name = \"public.goods\"\nfolder = \"items\"",
        )
    });
    db.exec("UPDATE goods SET title = 'again' WHERE id = 1;")
        .await;
    run_once(&config).await;
    lake.assert_matches(&db, "public.goods", "items", "id");
}

/// A value that does not compress below PostgreSQL's TOAST threshold.
fn big_value(bytes: usize) -> String {
    format!(
        "(SELECT string_agg(md5(random()::text), '') FROM generate_series(1, {}))",
        bytes / 32
    )
}

async fn toast_table(db: &TestDb, full: bool) {
    db.exec(&format!(
        "CREATE TABLE docs (id int PRIMARY KEY, n int, body text);
         INSERT INTO docs VALUES (1, 0, {}), (2, 0, {});
         {}",
        big_value(100 * 1024),
        big_value(1024 * 1024),
        if full {
            "ALTER TABLE docs REPLICA IDENTITY FULL;"
        } else {
            ""
        }
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_toasted_values_survive_updates_with_full_identity() {
    let db = database("toast_full").await;
    toast_table(&db, true).await;
    let lake = Lake::new();
    let config = lake.config(&db, "[[tables]]\nname = \"public.docs\"\n");
    run_once(&config).await;
    db.exec("UPDATE docs SET n = n + 1; UPDATE docs SET n = n + 1 WHERE id = 2;")
        .await;
    run_once(&config).await;
    lake.assert_matches(&db, "public.docs", "docs", "id");
    assert_eq!(
        lake.query_i64(
            "docs",
            "SELECT count(*) FROM {t} WHERE change_type = 'UPDATE' AND length(body) >= 100 * 1024"
        ),
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_full_identity_check_says_so_and_unchanged_values_are_listed() {
    let db = database("toast_default").await;
    toast_table(&db, false).await;
    let lake = Lake::new();
    let config = lake.config(&db, "[[tables]]\nname = \"public.docs\"\n");
    let check = with_config(&["check"], &config).await;
    assert!(
        check
            .stdout
            .contains("ALTER TABLE public.docs REPLICA IDENTITY FULL;"),
        "{}",
        check.stdout
    );
    run_once(&config).await;
    db.exec("UPDATE docs SET n = n + 1 WHERE id = 1;").await;
    run_once(&config).await;
    // The row says the value was not sent; it never presents NULL as the value.
    assert_eq!(
        lake.query_i64(
            "docs",
            "SELECT count(*) FROM {t} WHERE change_type = 'UPDATE' AND list_contains(unchanged_columns, 'body')"
        ),
        1
    );
    lake.assert_matches(&db, "public.docs", "docs", "id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_without_a_primary_key_replicate_with_full_or_index_identity() {
    let db = database("no_pk_ident").await;
    db.exec(
        "CREATE TABLE by_index (code text NOT NULL, v int);
         CREATE UNIQUE INDEX by_index_code ON by_index (code);
         ALTER TABLE by_index REPLICA IDENTITY USING INDEX by_index_code;
         CREATE TABLE full_rows (a int, b text);
         ALTER TABLE full_rows REPLICA IDENTITY FULL;
         CREATE TABLE nothing (id int PRIMARY KEY);
         ALTER TABLE nothing REPLICA IDENTITY NOTHING;
         INSERT INTO by_index SELECT 'c' || i, i FROM generate_series(1, 10) i;
         INSERT INTO full_rows SELECT i, 'b' || i FROM generate_series(1, 10) i;",
    )
    .await;
    let lake = Lake::new();
    let bad = lake.config(&db, "[[tables]]\nname = \"public.nothing\"\n");
    let check = with_config(&["check"], &bad).await;
    assert_eq!(check.code, 1);
    assert!(
        check.stdout.contains("REPLICA IDENTITY NOTHING")
            && check
                .stdout
                .contains("ALTER TABLE public.nothing REPLICA IDENTITY"),
        "{}",
        check.stdout
    );
    let config = lake.config(
        &db,
        "[[tables]]\nname = \"public.by_index\"\n\n[[tables]]\nname = \"public.full_rows\"\n",
    );
    run_once(&config).await;
    db.exec(
        "UPDATE by_index SET v = v * 10 WHERE code IN ('c1', 'c2'); DELETE FROM by_index WHERE code = 'c3';
         UPDATE full_rows SET b = 'changed' WHERE a = 1; DELETE FROM full_rows WHERE a = 2;",
    )
    .await;
    run_once(&config).await;
    lake.assert_matches(&db, "public.by_index", "by_index", "code");
    // Without a key, FULL identity makes every column the key.
    lake.assert_matches(&db, "public.full_rows", "full_rows", "a,b");
    assert_eq!(
        lake.query_i64(
            "full_rows",
            "SELECT count(*) FROM {t} WHERE change_type = 'DELETE' AND b = 'b2'"
        ),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_named_like_a_metadata_column_needs_the_prefix() {
    let db = database("collision").await;
    db.exec("CREATE TABLE audit (id int PRIMARY KEY, change_type text, \"_hidden\" int); INSERT INTO audit VALUES (1, 'mine', 0);").await;
    let lake = Lake::new();
    let config = lake.config(&db, "[[tables]]\nname = \"public.audit\"\n");
    let check = with_config(&["check"], &config).await;
    assert_eq!(check.code, 1);
    assert!(
        check.stdout.contains("metadata_column_prefix"),
        "{}",
        check.stdout
    );
    let config = lake.config_with(
        &db.url,
        &db.name,
        "[[tables]]\nname = \"public.audit\"\n",
        "",
    );
    edit_config(&config, |t| {
        t.replace(
            "[output]\n",
            "[output]\nmetadata_column_prefix = \"s2l_\"\n",
        )
    });
    let check = with_config(&["check"], &config).await;
    assert_eq!(check.code, 0, "{}", check.stdout);
    assert!(check.stdout.contains("\"_hidden\""), "{}", check.stdout);
    run_once(&config).await;
    db.exec("UPDATE audit SET change_type = 'still mine';")
        .await;
    run_once(&config).await;
    let rows = lake.query(
        "audit",
        "SELECT change_type, s2l_change_type FROM {t} ORDER BY s2l_change_lsn, s2l_change_seq",
    );
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(
        (rows[1][0].as_str(), rows[1][1].as_str()),
        (Some("still mine"), Some("UPDATE"))
    );
}
