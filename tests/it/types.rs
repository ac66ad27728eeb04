//! Types of the seed and of common schemas: equal in DuckDB/psycopg2 after the snapshot
//! and after streaming, in binary and in text pgoutput mode, with the Parquet types
//! Athena, DuckDB and pyarrow read without casts.

use crate::support::{database, run_once, Lake};

const TABLE: &str = "CREATE TABLE typed (
    id bigint PRIMARY KEY,
    i2 smallint, i4 integer, i8 bigint, f4 real, f8 double precision, n numeric(12,3),
    t text, vc varchar(20), c char(5), b boolean, d date, ts timestamp, tstz timestamptz,
    u uuid, j json, jb jsonb, by bytea);";

const ROWS: &str = "
    (ID1, 32767, 2147483647, 9223372036854775807, 3.5, 2.718281828459045, 123456789.123,
     'text', 'varchar', 'abc', true, '2025-07-24', '2025-07-24 01:05:23.123456',
     '2025-07-24 03:05:23.654321+02', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"a\": [1, 2]}',
     '{\"b\": {\"c\": null}}', '\\x00ff10'),
    (ID2, -32768, -2147483648, -9223372036854775808, -0.25, -1e308, -0.001,
     '', ' ', 'x', false, '1970-01-01', '1999-12-31 23:59:59', '2000-01-01 00:00:00+00',
     '00000000-0000-0000-0000-000000000000', '[]', '[]', '\\x'),
    (ID3, 0, 0, 0, 'NaN', 'Infinity', 0, 'multi
line', NULL, NULL, NULL, '0001-01-01', '1900-01-01 00:00:00', '1969-12-31 23:59:59.999999+00',
     NULL, 'null', '\"s\"', NULL),
    (ID4, NULL, NULL, NULL, NULL, '-Infinity', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)";

fn rows(offset: i64) -> String {
    (1..=4).fold(ROWS.to_string(), |acc, i| {
        acc.replace(&format!("(ID{i},"), &format!("({},", i + offset))
    })
}

async fn round_trip(binary: &str) {
    let db = database(&format!("types_{binary}")).await;
    db.exec(TABLE).await;
    // Text mode gets timestamptz in the session's zone: a half-hour offset exercises parsing it.
    db.exec(&format!(
        "ALTER DATABASE {} SET timezone = 'America/St_Johns'",
        db.name
    ))
    .await;
    db.exec(&format!("INSERT INTO typed VALUES {}", rows(0)))
        .await;
    let lake = Lake::new();
    let config = lake.config(&db, "[[tables]]\nname = \"public.typed\"\n");
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        text.replace("[output]", &format!("binary = \"{binary}\"\n\n[output]")),
    )
    .expect("config");
    run_once(&config).await;
    lake.assert_matches(&db, "public.typed", "typed", "id");
    // The same rows again through the stream.
    db.exec(&format!("INSERT INTO typed VALUES {}", rows(100)))
        .await;
    db.exec("UPDATE typed SET t = t || '!' WHERE id IN (1, 101); DELETE FROM typed WHERE id = 2;")
        .await;
    run_once(&config).await;
    lake.assert_matches(&db, "public.typed", "typed", "id");
    let s = lake.summary("typed", "id");
    let types = &s["types"];
    let expect = [
        ("i2", "int16"),
        ("i4", "int32"),
        ("i8", "int64"),
        ("f4", "float"),
        ("f8", "double"),
        ("n", "decimal128(12, 3)"),
        ("t", "string"),
        ("vc", "string"),
        ("c", "string"),
        ("b", "bool"),
        ("d", "date32[day]"),
        ("ts", "timestamp[us]"),
        ("tstz", "timestamp[us, tz=UTC]"),
        ("u", "string"),
        ("j", "string"),
        ("jb", "string"),
        ("by", "binary"),
        ("change_type", "string"),
        ("change_lsn", "int64"),
        ("change_seq", "int64"),
        ("commit_ts", "timestamp[us, tz=UTC]"),
        ("etl_processed_at", "timestamp[us, tz=UTC]"),
    ];
    for (col, ty) in expect {
        assert_eq!(types[col], ty, "column {col}: {s}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn common_types_round_trip_in_binary_mode() {
    round_trip("on").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn common_types_round_trip_in_text_mode() {
    round_trip("off").await;
}
