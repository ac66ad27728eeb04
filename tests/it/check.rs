//! `check`, `status` and the errors a user meets first: one clear line, the right exit
//! code, nothing created or acknowledged, and never a password in the output.

use crate::support::{
    database, database_on, edit_config, run_once, silent_after_startup, silent_port, slot2lake,
    with_config, Lake, TestDb, SEED_TABLES,
};
use slot2lake::demo::TempCluster;

async fn slot_exists(db: &TestDb) -> bool {
    db.slot_confirmed(&db.name).await.is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_and_says_what_will_be_created() {
    let db = database("check_ok").await;
    db.seed(2, 2).await;
    let lake = Lake::new();
    let config = lake.config(&db, SEED_TABLES);
    let run = with_config(&["check"], &config).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("will be created"), "{}", run.stdout);
    // orders is partitioned by a non-key column without REPLICA IDENTITY FULL.
    assert!(
        run.stdout.contains("REPLICA IDENTITY FULL"),
        "{}",
        run.stdout
    );
    assert!(!slot_exists(&db).await, "check must not create the slot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_without_identity_fails_check_and_run_with_the_fix() {
    let db = database("no_pk").await;
    db.exec("CREATE TABLE events (id int, payload text); INSERT INTO events VALUES (1, 'a');")
        .await;
    let lake = Lake::new();
    let config = lake.config(&db, "[[tables]]\nname = \"public.events\"\n");
    let run = with_config(&["check"], &config).await;
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stdout
            .contains("ALTER TABLE public.events REPLICA IDENTITY FULL;"),
        "{}",
        run.stdout
    );
    let run = with_config(&["run", "--once"], &config).await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("REPLICA IDENTITY FULL"),
        "{}",
        run.stderr
    );
    assert_eq!(
        run.stderr
            .lines()
            .filter(|l| l.starts_with("error:"))
            .count(),
        1,
        "{}",
        run.stderr
    );
    assert!(!slot_exists(&db).await);
    // With the fix applied, it works, and FULL identity makes deletes carry every column.
    db.exec("ALTER TABLE events REPLICA IDENTITY FULL;").await;
    run_once(&config).await;
    db.exec("UPDATE events SET payload = 'b'; DELETE FROM events;")
        .await;
    run_once(&config).await;
    assert_eq!(
        lake.query_i64(
            "events",
            "SELECT count(*) FROM {t} WHERE change_type = 'DELETE' AND payload = 'b'"
        ),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_table_and_an_unwritable_output_are_reported() {
    let db = database("missing").await;
    let lake = Lake::new();
    let blocker = lake.path().join("not-a-dir");
    std::fs::write(&blocker, "x").expect("file");
    let config = lake.path().join("bad.toml");
    std::fs::write(
        &config,
        format!(
            "[source]\nurl = \"{}\"\nslot = \"{}\"\n[output]\nurl = \"file://{}/lake\"\n[[tables]]\nname = \"public.nope\"\n",
            db.url,
            db.name,
            blocker.display()
        ),
    )
    .expect("config");
    let run = with_config(&["check"], &config).await;
    assert_eq!(run.code, 1);
    assert!(
        run.stdout.contains("public.nope does not exist"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .lines()
            .any(|l| l.starts_with("FAIL") && l.contains("output")),
        "{}",
        run.stdout
    );
    let run = with_config(&["run", "--once"], &config).await;
    assert_eq!(run.code, 1);
    assert!(!slot_exists(&db).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_without_replication_is_told_what_to_grant() {
    let db = database("no_repl").await;
    db.seed(1, 1).await;
    let role = format!("{}_reader", db.name);
    db.exec(&format!(
        "CREATE ROLE {role} LOGIN; GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}; GRANT CREATE ON DATABASE {} TO {role};",
        db.name
    ))
    .await;
    let lake = Lake::new();
    let url = db.url.replace("postgres@", &format!("{role}@"));
    let config = lake.config_with(&url, &db.name, SEED_TABLES, "");
    let run = with_config(&["check"], &config).await;
    assert_eq!(run.code, 1);
    assert!(
        run.stdout
            .contains(&format!("ALTER ROLE \"{role}\" WITH REPLICATION")),
        "{}",
        run.stdout
    );
    let run = with_config(&["run", "--once"], &config).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("WITH REPLICATION"), "{}", run.stderr);
    assert!(!slot_exists(&db).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_level_replica_is_one_clear_error() {
    let cluster = TempCluster::start(&["wal_level = replica"]).expect("cluster");
    let db = database_on(&cluster, "replica").await;
    db.seed(1, 1).await;
    let lake = Lake::new();
    let config = lake.config(&db, SEED_TABLES);
    let run = with_config(&["check"], &config).await;
    assert_eq!(run.code, 1);
    assert!(
        run.stdout.contains("ALTER SYSTEM SET wal_level = logical"),
        "{}",
        run.stdout
    );
    let run = with_config(&["run", "--once"], &config).await;
    assert_eq!(run.code, 1);
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{}", run.stderr);
    assert!(
        errors[0].contains("wal_level is \"replica\""),
        "{}",
        errors[0]
    );
    assert!(
        lake.files("").is_empty(),
        "nothing written: {:?}",
        lake.files("")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_never_reach_logs_or_errors() {
    let db = database("secret").await;
    db.seed(2, 2).await;
    let lake = Lake::new();
    let secret = "s3cr3t-Pa55word";
    // Trust authentication ignores the password, so the whole pipeline runs with it in the URL.
    let url = db.url.replace("postgres@", &format!("postgres:{secret}@"));
    let config = lake.config_with(&url, &db.name, SEED_TABLES, "");
    let mut outputs = vec![];
    for args in [
        vec!["-v", "run", "--once"],
        vec!["-v", "status", "--json"],
        vec!["-v", "check"],
        vec!["-v", "--log-format", "json", "run", "--once"],
    ] {
        let run = with_config(&args, &config).await;
        assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
        outputs.push(run);
    }
    // JSON logs: one object per line, with level and message, and no colour codes.
    let json = &outputs[3].stderr;
    assert!(json.lines().count() > 2, "{json}");
    for line in json.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
    }
    assert!(
        !outputs[0].stderr.contains('\u{1b}'),
        "{}",
        outputs[0].stderr
    );
    // An unreachable server, whose error names the target.
    let bad = url.replace(
        &format!(
            ":{}/",
            db.url
                .split(':')
                .nth(2)
                .and_then(|s| s.split('/').next())
                .expect("port")
        ),
        ":1/",
    );
    let config = lake.config_with(&bad, &db.name, SEED_TABLES, "");
    let run = with_config(&["run", "--once"], &config).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("connection refused"), "{}", run.stderr);
    assert!(run.stderr.contains("127.0.0.1:1"), "{}", run.stderr);
    outputs.push(run);
    for run in outputs {
        assert!(
            !run.stdout.contains(secret) && !run.stderr.contains(secret),
            "{}{}",
            run.stdout,
            run.stderr
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_mistakes_exit_2_and_name_the_key() {
    let lake = Lake::new();
    let missing = lake.path().join("absent.toml");
    let run = with_config(&["run", "--once"], &missing).await;
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("config example"), "{}", run.stderr);

    let typo = lake.path().join("typo.toml");
    std::fs::write(
        &typo,
        "[source]\nurl = \"postgres://u@127.0.0.1/db\"\nslott = \"x\"\n[output]\nurl = \"file:///tmp/x\"\n[[tables]]\nname = \"t\"\n",
    )
    .expect("write");
    let run = with_config(&["check"], &typo).await;
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("slott"), "{}", run.stderr);

    let bad = lake.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[source]\nurl = \"postgres://u@127.0.0.1/db\"\n[output]\nurl = \"file:///tmp/x\"\n[flush]\nmemory_limit = \"1KB\"\n[[tables]]\nname = \"t\"\n",
    )
    .expect("write");
    let run = with_config(&["status"], &bad).await;
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("flush.memory_limit"), "{}", run.stderr);
    let run = slot2lake(&["run", "--bogus"]).await;
    assert_eq!(run.code, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_slot_lag_and_watermarks() {
    let db = database("status").await;
    db.seed(3, 3).await;
    let lake = Lake::new();
    let config = lake.config(&db, SEED_TABLES);
    let run = with_config(&["status", "--json"], &config).await;
    let before: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
    assert_eq!(before["slot"]["exists"], false);
    assert!(before["tables"]["orders"].is_null());
    run_once(&config).await;
    db.exec("INSERT INTO orders (customer_id) SELECT 1 FROM generate_series(1, 100)")
        .await;
    let run = with_config(&["status", "--json"], &config).await;
    let after: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
    assert_eq!(after["slot"]["exists"], true);
    assert!(
        after["slot"]["lag_bytes"].as_u64().expect("lag") > 0,
        "{after}"
    );
    assert_eq!(after["tables"]["orders"]["kind"], "snapshot");
    let lsn = |v: &serde_json::Value| {
        v.as_str()
            .expect("lsn")
            .parse::<slot2lake::lsn::Lsn>()
            .expect("lsn")
    };
    assert!(
        lsn(&after["slot"]["confirmed_flush_lsn"]) >= lsn(&after["tables"]["orders"]["lsn"]),
        "{after}"
    );
    let run = with_config(&["status"], &config).await;
    assert!(
        run.stdout.contains("table orders: watermark"),
        "{}",
        run.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_one_line_without_the_password() {
    let db = database("wrong_pw").await;
    db.seed(1, 1).await;
    let role = format!("{}_app", db.name);
    db.exec(&format!(
        "CREATE ROLE {role} LOGIN REPLICATION PASSWORD 'right-password'"
    ))
    .await;
    // Password authentication for this role only, ahead of the cluster's trust rules.
    let hba = crate::support::cluster().data_dir().join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).expect("pg_hba.conf");
    std::fs::write(
        &hba,
        format!("host all {role} 127.0.0.1/32 scram-sha-256\n{rules}"),
    )
    .expect("write pg_hba.conf");
    db.exec("SELECT pg_reload_conf()").await;
    let lake = Lake::new();
    let secret = "wr0ng-Secret";
    let url = db.url.replace("postgres@", &format!("{role}:{secret}@"));
    let config = lake.config_with(&url, &db.name, SEED_TABLES, "");
    for args in [["run", "--once"], ["status", "--json"]] {
        let run = with_config(&[args[0], args[1]], &config).await;
        assert_eq!(run.code, 1, "{}", run.stderr);
        let errors: Vec<&str> = run
            .stderr
            .lines()
            .filter(|l| l.starts_with("error:"))
            .collect();
        assert_eq!(errors.len(), 1, "{}", run.stderr);
        assert!(
            errors[0].contains(&format!(
                "password authentication failed for user \"{role}\""
            )),
            "{}",
            errors[0]
        );
        assert!(
            errors[0].contains("check the password in source.url"),
            "{}",
            errors[0]
        );
        assert!(!run.stderr.contains(secret) && !run.stdout.contains(secret));
    }
    assert!(!slot_exists(&db).await);
}

/// A server that accepts the connection and never answers (a stuck proxy or pooler):
/// `check` and `run --once` fail within the connect timeout instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_is_a_timeout_not_a_hang() {
    let port = silent_port().await;
    let lake = Lake::new();
    let config = lake.config_with(
        &format!("postgres://postgres@127.0.0.1:{port}/db"),
        "silent",
        "[[tables]]\nname = \"public.t\"\n",
        "",
    );
    for args in [&["check"][..], &["run", "--once"][..]] {
        let started = std::time::Instant::now();
        let run = with_config(args, &config).await;
        assert_eq!(run.code, 1, "{args:?}: {}{}", run.stdout, run.stderr);
        let out = format!("{}{}", run.stdout, run.stderr);
        assert!(out.contains("no answer within"), "{args:?}: {out}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(90),
            "{args:?} took {:?}",
            started.elapsed()
        );
    }
}

/// A pooler that passes the login and then stops answering: every statement is bounded
/// by `source.query_timeout`, and `run --once` gives up within its retry budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stops_answering_after_login_is_a_timeout_not_a_hang() {
    let db = database("stops_answering").await;
    db.seed(2, 2).await;
    let url = db.url_through(silent_after_startup(db.port()).await);
    let lake = Lake::new();
    let config = lake.config_with(
        &url,
        &db.name,
        SEED_TABLES,
        "[retry]\nrun_once_budget = \"8s\"\nmin_delay = \"1s\"\n",
    );
    edit_config(&config, |t| {
        t.replacen("[output]", "query_timeout = \"2s\"\n\n[output]", 1)
    });
    for args in [&["check"][..], &["run", "--once"][..]] {
        let started = std::time::Instant::now();
        let run = with_config(args, &config).await;
        let out = format!("{}{}", run.stdout, run.stderr);
        assert_eq!(run.code, 1, "{args:?}: {out}");
        assert!(out.contains("no answer within 2 s"), "{args:?}: {out}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "{args:?} took {:?}",
            started.elapsed()
        );
    }
    assert!(
        !slot_exists(&db).await,
        "nothing is created through a silent connection"
    );
}

/// The replication connection is bounded like the regular one: a server that accepts
/// and never answers, or stops answering after the login, is an error in bounded time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replication_connection_to_a_silent_server_times_out() {
    use slot2lake::source::replication::{ReplicationStream, StreamOptions};
    let db = database("repl_silent").await;
    let silent = silent_port().await;
    let after_login = silent_after_startup(db.port()).await;
    let opts = StreamOptions {
        slot: "repl_silent".into(),
        publication: "repl_silent".into(),
        binary: true,
        export_snapshot: false,
        temporary: true,
        answer_within: Some(std::time::Duration::from_secs(2)),
    };
    for proxy in [silent, after_login] {
        let url = slot2lake::config::SecretUrl::new(db.url_through(proxy));
        let started = std::time::Instant::now();
        let outcome = tokio::time::timeout(std::time::Duration::from_secs(120), async {
            let repl = ReplicationStream::connect(&url, &opts).await?;
            repl.start(slot2lake::lsn::Lsn(0)).await.map(|_| ())
        })
        .await;
        let error = match outcome {
            Ok(Err(e)) => e.to_string(),
            Ok(Ok(())) => panic!("port {proxy}: started through a silent proxy"),
            Err(_) => panic!("port {proxy}: no error within 120 s"),
        };
        assert!(error.contains("no answer within"), "port {proxy}: {error}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "port {proxy}: took {:?}",
            started.elapsed()
        );
    }
}
