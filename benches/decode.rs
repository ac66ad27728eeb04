//! Microbenchmarks of the flush path without a database: spooled pgoutput messages →
//! decode → Arrow → Parquet. `cargo bench --bench decode`.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use chrono::Utc;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use slot2lake::checkpoint::FlushIntent;
use slot2lake::config::{Compression, OutputConfig, TableConfig};
use slot2lake::decode::schema::oid;
use slot2lake::decode::{
    ChangeType, ColumnSpec, Datum, RowBatch, RowMeta, TableSchema, TypeCatalog, Warnings,
};
use slot2lake::lake::Lake;
use slot2lake::lsn::Lsn;
use slot2lake::sink::{PartitionKey, Sink, SinkOptions};
use slot2lake::spool::{SegmentHeader, Spool};

const ROWS: usize = 100_000;
/// orders: order_id, customer_id, product_name, quantity, price numeric(10,2), order_date, updated_at
const COLUMNS: [(&str, u32, i32); 7] = [
    ("order_id", oid::INT4, -1),
    ("customer_id", oid::INT4, -1),
    ("product_name", oid::VARCHAR, 104),
    ("quantity", oid::INT4, -1),
    ("price", oid::NUMERIC, (10 << 16 | 2) + 4),
    ("order_date", oid::DATE, -1),
    ("updated_at", oid::TIMESTAMP, -1),
];

fn numeric(cents: i64) -> Vec<u8> {
    // 12345.67 style: integer part and two decimals, base 10000 digits.
    let (int, frac) = (cents / 100, cents % 100);
    let mut v = Vec::new();
    v.extend_from_slice(&2u16.to_be_bytes());
    v.extend_from_slice(&0i16.to_be_bytes());
    v.extend_from_slice(&0u16.to_be_bytes());
    v.extend_from_slice(&2u16.to_be_bytes());
    v.extend_from_slice(&(int as i16).to_be_bytes());
    v.extend_from_slice(&((frac * 100) as i16).to_be_bytes());
    v
}

fn values(i: usize) -> Vec<Vec<u8>> {
    vec![
        (i as i32).to_be_bytes().to_vec(),
        ((i % 1000) as i32).to_be_bytes().to_vec(),
        format!("Product {}", i % 17).into_bytes(),
        ((i % 5) as i32 + 1).to_be_bytes().to_vec(),
        numeric((i % 100_000) as i64 * 7),
        (9000 + (i % 60) as i32).to_be_bytes().to_vec(),
        (800_000_000_000_000i64 + i as i64).to_be_bytes().to_vec(),
    ]
}

fn insert(i: usize) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(b'I');
    b.put_u32(16384);
    b.put_u8(b'N');
    b.put_u16(COLUMNS.len() as u16);
    for v in values(i) {
        b.put_u8(b'b');
        b.put_u32(v.len() as u32);
        b.put_slice(&v);
    }
    b.freeze()
}

fn relation() -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(b'R');
    b.put_u32(16384);
    b.put_slice(b"public\0orders\0");
    b.put_u8(b'd');
    b.put_u16(COLUMNS.len() as u16);
    for (i, (name, t, m)) in COLUMNS.iter().enumerate() {
        b.put_u8(u8::from(i == 0));
        b.put_slice(name.as_bytes());
        b.put_u8(0);
        b.put_u32(*t);
        b.put_i32(*m);
    }
    b.freeze()
}

fn schema() -> Arc<TableSchema> {
    let cols = COLUMNS
        .iter()
        .enumerate()
        .map(|(i, (n, t, m))| ColumnSpec::new(*n, *t, *m, i == 0))
        .collect();
    Arc::new(TableSchema::new("public", "orders", cols, Some("order_date")).expect("schema"))
}

fn output(dir: &std::path::Path) -> OutputConfig {
    let text = format!("url = \"file://{}\"", dir.display());
    toml::from_str(&text).expect("output")
}

fn table() -> TableConfig {
    toml::from_str("name = \"public.orders\"\npartition_by = \"order_date\"").expect("table")
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let rows: Vec<Vec<Vec<u8>>> = (0..ROWS).map(values).collect();
    let mut g = c.benchmark_group("flush");
    g.throughput(Throughput::Elements(ROWS as u64));
    g.sample_size(10);

    // Binary values → Arrow builders.
    g.bench_function("decode_to_arrow", |b| {
        let schema = schema();
        let kinds: Vec<_> = schema.columns.iter().map(|c| c.kind).collect();
        let meta = RowMeta {
            change_type: ChangeType::Insert,
            lsn: 1,
            seq: 1,
            commit_us: 0,
        };
        b.iter(|| {
            let mut batch = RowBatch::new(schema.clone(), 8192);
            let mut w = Warnings::default();
            for r in &rows {
                batch
                    .append(
                        kinds
                            .iter()
                            .zip(r)
                            .map(|(_, v)| Datum::Binary(v.as_slice())),
                        &meta,
                        &mut w,
                    )
                    .expect("append");
                if batch.rows() == 8192 {
                    std::hint::black_box(batch.finish(0));
                }
            }
            std::hint::black_box(batch.finish(0));
        })
    });

    // The whole flush: spool segment → pgoutput parse → decode → partitioned Parquet files.
    let spool_dir = tempfile::tempdir().expect("tmp");
    let spool = Spool::open(spool_dir.path()).expect("spool");
    let header = SegmentHeader {
        format_version: 1,
        slot: "bench".into(),
        protocol_version: 1,
        binary: true,
    };
    let mut w = spool.writer(header, Lsn(1), u64::MAX);
    w.receive(relation()).expect("relation");
    for t in 0..(ROWS / 1000) {
        let lsn = 1000 + t as u64 * 10;
        let mut begin = BytesMut::new();
        begin.put_u8(b'B');
        begin.put_u64(lsn);
        begin.put_i64(0);
        begin.put_u32(7);
        w.receive(begin.freeze()).expect("begin");
        for i in 0..1000 {
            w.receive(insert(t * 1000 + i)).expect("insert");
        }
        let mut commit = BytesMut::new();
        commit.put_u8(b'C');
        commit.put_u8(0);
        commit.put_u64(lsn);
        commit.put_u64(lsn + 5);
        commit.put_i64(0);
        w.receive(commit.freeze()).expect("commit");
    }
    let cut = w.seal().expect("seal");
    let segments = spool.segments().expect("segments");
    g.bench_function("spool_to_parquet", |b| {
        b.iter_batched(
            || tempfile::tempdir().expect("lake"),
            |lake_dir| {
                let lake = rt
                    .block_on(Lake::open(&output(lake_dir.path())))
                    .expect("lake");
                let opts = SinkOptions {
                    compression: Compression::Snappy,
                    max_file_bytes: 256 << 20,
                    row_group_rows: 1_000_000,
                    memory_limit: 128 << 20,
                    encoders: 1,
                    tmp_dir: lake_dir.path().join("tmp"),
                    staging_prefix: None,
                    defer_publish: false,
                    may_exist: false,
                };
                let sink =
                    Sink::new(lake, rt.handle().clone(), opts, Utc::now(), cut).expect("sink");
                let intent = FlushIntent {
                    version: 1,
                    cut,
                    processed_at: Utc::now(),
                    from: Default::default(),
                };
                let out = slot2lake::flush::write_changes(
                    segments.iter().cloned(),
                    &[table()],
                    HashMap::new(),
                    Arc::new(TypeCatalog::default()),
                    &intent,
                    sink,
                )
                .expect("flush");
                assert_eq!(out.rows.values().sum::<u64>(), ROWS as u64);
                lake_dir
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
    sink_spread(c, &rt);
}

/// A first-run snapshot's sink side without a database: two workers' sinks take 1M rows
/// spread over N dates in arrival order (consecutive rows on different dates), then are
/// encoded together into staged files. Compare the spreads: the per-partition cost.
fn sink_spread(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    const SPREAD_ROWS: usize = 1_000_000;
    let mut g = c.benchmark_group("snapshot_sink");
    g.throughput(Throughput::Elements(SPREAD_ROWS as u64));
    g.sample_size(10);
    let schema = schema();
    let kinds: Vec<_> = schema.columns.iter().map(|c| c.kind).collect();
    let rows: Vec<Vec<Vec<u8>>> = (0..SPREAD_ROWS).map(values).collect();
    for spread in [120i32, 3650] {
        // Every run's lake is kept until the end: creating thousands of files right
        // after deleting thousands makes ext4's inode allocator the bottleneck.
        let mut kept = Vec::new();
        g.bench_function(format!("{spread}_dates"), |b| {
            b.iter_custom(|iters| {
                let started = std::time::Instant::now();
                for _ in 0..iters {
                    let lake_dir = tempfile::tempdir().expect("lake");
                    let lake = rt
                        .block_on(Lake::open(&output(lake_dir.path())))
                        .expect("lake");
                    let sinks: Vec<Sink> = (0..2)
                        .map(|w| {
                            let opts = SinkOptions {
                                compression: Compression::Snappy,
                                max_file_bytes: 256 << 20,
                                row_group_rows: 1_000_000,
                                memory_limit: 64 << 20,
                                encoders: 1,
                                tmp_dir: lake_dir.path().join("tmp"),
                                staging_prefix: Some("staging".into()),
                                defer_publish: false,
                                may_exist: false,
                            };
                            let mut sink = Sink::new(
                                lake.clone(),
                                rt.handle().clone(),
                                opts,
                                Utc::now(),
                                Lsn(1),
                            )
                            .expect("sink");
                            let mut meta = RowMeta {
                                change_type: ChangeType::Snapshot,
                                lsn: 1,
                                seq: (w as i64) << 40,
                                commit_us: 0,
                            };
                            for (i, r) in rows.iter().enumerate().skip(w).step_by(2) {
                                let day = 9000 + ((i as i64 * 7919) % i64::from(spread)) as i32;
                                sink.append(
                                    "orders",
                                    &schema,
                                    PartitionKey::Column(Some(day)),
                                    &meta,
                                    kinds
                                        .iter()
                                        .zip(r)
                                        .map(|(_, v)| Datum::Binary(v.as_slice())),
                                )
                                .expect("append");
                                meta.seq += 1;
                            }
                            sink
                        })
                        .collect();
                    let files = Sink::finish_all(sinks).expect("finish");
                    assert_eq!(files.len(), spread as usize);
                    kept.push(lake_dir);
                }
                started.elapsed()
            })
        });
        drop(kept);
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
