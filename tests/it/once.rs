//! `run --once`: first-run snapshot, streamed changes, the seed's layout and watermarks.

use crate::support::{cluster, run_once, Lake, SEED_TABLES};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_run_snapshots_then_streams_changes() {
    let db = cluster().database("first_run").await;
    db.seed(50, 400).await;
    let lake = Lake::new();
    let config = lake.config(&db, SEED_TABLES);

    let run = run_once(&config).await;
    assert!(run.stdout.contains("450 snapshot rows"), "{}", run.stdout);
    lake.assert_matches(&db, "public.customers", "customers", "customer_id");
    lake.assert_matches(&db, "public.orders", "orders", "order_id");
    let s = lake.summary("orders", "order_id");
    assert_eq!(s["change_types"]["SNAPSHOT"], 400, "{s}");
    let wm = lake.watermark("orders");
    assert_eq!(wm["kind"], "snapshot");

    db.exec(
        "INSERT INTO customers (name, email) VALUES ('New', 'new@example.com');
         UPDATE orders SET quantity = quantity + 10 WHERE order_id <= 20;
         DELETE FROM orders WHERE order_id BETWEEN 21 AND 30;
         INSERT INTO orders (customer_id, product_name, quantity, price) VALUES (1, 'Fresh', 1, 9.99);",
    )
    .await;
    let run = run_once(&config).await;
    assert!(run.stdout.contains("0 snapshot rows"), "{}", run.stdout);
    lake.assert_matches(&db, "public.customers", "customers", "customer_id");
    lake.assert_matches(&db, "public.orders", "orders", "order_id");
    let s = lake.summary("orders", "order_id");
    assert_eq!(s["change_types"]["UPDATE"], 20, "{s}");
    assert_eq!(s["change_types"]["DELETE"], 10, "{s}");
    assert_eq!(s["change_types"]["INSERT"], 1, "{s}");
    assert_eq!(s["duplicates"], 0, "{s}");
    let wm = lake.watermark("orders");
    assert_eq!(wm["kind"], "changes");
    assert_eq!(db.slot_confirmed(&db.name).await.as_deref(), wm["lsn"].as_str());
}
