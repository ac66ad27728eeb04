//! TLS to the source: `sslmode` and `sslrootcert` as libpq reads them, against a server
//! that refuses unencrypted connections from slot2lake's user.

use std::path::{Path, PathBuf};
use std::process::Command;

use slot2lake::demo::postgres::find_bindir;
use slot2lake::demo::TempCluster;

use crate::support::{database_on, run_once, with_config, Lake, SEED_TABLES};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate it signed for 127.0.0.1, and an unrelated CA.
fn certificates() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("cert dir");
    let d = dir.path();
    let key = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for (name, cn) in [("ca", "slot2lake test CA"), ("other", "another CA")] {
        let (keyfile, pem, subj) = (
            format!("{name}.key"),
            format!("{name}.pem"),
            format!("/CN={cn}"),
        );
        let mut args = vec!["req", "-x509", "-days", "2", "-subj", &subj];
        args.extend(key);
        args.extend(["-keyout", &keyfile, "-out", &pem]);
        openssl(d, &args);
    }
    let mut args = vec![
        "req",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ];
    args.extend(key);
    openssl(d, &args);
    std::fs::write(
        d.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .expect("ext");
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.pem",
        ],
    );
    std::fs::write(
        d.join("pg_hba.conf"),
        "local all all trust\n\
         hostssl all s2l_tls 127.0.0.1/32 trust\n\
         hostnossl all s2l_tls 127.0.0.1/32 reject\n\
         host all all 127.0.0.1/32 trust\n",
    )
    .expect("hba");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.join("server.key"), std::fs::Permissions::from_mode(0o600))
        .expect("key mode");
    // The server runs as `postgres` when the tests run as root.
    let _ = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(d)
        .output();
    dir
}

fn has_tls(bindir: &Path) -> bool {
    Command::new(bindir.join("pg_config"))
        .arg("--configure")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("ssl"))
}

/// The PyPI build of PostgreSQL 18 (the suite's second pass) has no TLS; the client side
/// is what this tests, so it then runs on the system's PostgreSQL.
fn bindir_with_tls() -> PathBuf {
    let default = find_bindir().expect("PostgreSQL binaries");
    if has_tls(&default) {
        return default;
    }
    std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .find(|d| has_tls(d))
        .expect("no PostgreSQL with TLS support: install Debian's postgresql (scripts/ensure-deps)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_modes_follow_libpq_and_verify_full_replicates() {
    let certs = certificates();
    let c = |f: &str| certs.path().join(f).display().to_string();
    let cluster = TempCluster::start_in(
        bindir_with_tls(),
        &[
            "ssl = on",
            &format!("ssl_cert_file = '{}'", c("server.pem")),
            &format!("ssl_key_file = '{}'", c("server.key")),
            &format!("hba_file = '{}'", c("pg_hba.conf")),
        ],
    )
    .expect("cluster with TLS");
    let db = database_on(&cluster, "tls").await;
    db.seed(10, 50).await;
    db.exec("CREATE ROLE s2l_tls LOGIN SUPERUSER").await;
    let base = cluster.url(&db.name).replace("postgres@", "s2l_tls@");
    let lake = Lake::new();
    let config =
        |params: &str| lake.config_with(&format!("{base}?{params}"), &db.name, SEED_TABLES, "");
    let fails = |params: &str| {
        let path = config(params);
        async move {
            let run = with_config(&["run", "--once"], &path).await;
            assert_eq!(run.code, 1, "{}", run.stderr);
            run.stderr
        }
    };

    let err = fails("sslmode=disable").await;
    assert!(err.contains("requires TLS"), "{err}");
    let err = fails(&format!(
        "sslmode=verify-full&sslrootcert={}",
        c("other.pem")
    ))
    .await;
    assert!(err.contains("signed by a CA in sslrootcert"), "{err}");
    let err = fails("sslmode=verify-ca").await;
    assert!(err.contains("sslrootcert"), "{err}");
    assert_eq!(
        db.slot_confirmed(&db.name).await,
        None,
        "a failed run created the slot"
    );

    let verified = config(&format!("sslmode=verify-full&sslrootcert={}", c("ca.pem")));
    run_once(&verified).await;
    db.exec("UPDATE orders SET quantity = 7 WHERE order_id < 5; DELETE FROM customers WHERE customer_id = 9;")
        .await;
    run_once(&verified).await;
    lake.assert_matches(&db, "public.customers", "customers", "customer_id");
    lake.assert_matches(&db, "public.orders", "orders", "order_id");
    // The default (prefer) encrypts too, so the server lets it in.
    run_once(&config("application_name=slot2lake-tls")).await;
}
