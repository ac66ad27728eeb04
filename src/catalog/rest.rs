//! An Iceberg REST catalog (`catalog.kind = "iceberg-rest"`): Polaris, Lakekeeper,
//! Nessie, Gravitino, Unity Catalog, or any server of the REST catalog specification
//! (<https://iceberg.apache.org/rest-catalog-spec/>).
//!
//! The lake's own metadata stays the commit point (`iceberg::catalog`: a create-only
//! `v<N>.metadata.json`, which exactly-once and recovery read), as with Glue. After each
//! commit the catalog's table is brought to the same state: registered
//! (`POST …/register`) the first time, then one `POST …/tables/<name>` per catch-up
//! carrying the snapshots, schemas and specs it lacks and the expired snapshots it still
//! lists, guarded by `assert-table-uuid` and `assert-ref-snapshot-id`. So the catalog's
//! table has exactly the lake's snapshots (with their `slot2lake.lsn`), and a catalog
//! left behind by a crash catches up in one commit on the next flush. The catalog writes
//! its own metadata files into the table's `metadata/` folder; slot2lake's orphan
//! removal leaves them alone (only the catalog knows which it still needs).
//!
//! What to send is decided by [`plan`], a pure function of the catalog's metadata and
//! the lake's; this module's HTTP code carries it out.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use super::Readiness;
use crate::config::{Catalog, Config, RestAuth, RestCatalogConfig};
use crate::iceberg::catalog::LocalCatalog;
use crate::iceberg::spec::{self, TableMetadata};
use crate::retry::{Action, Classify};

/// How many times a commit is rebuilt after losing to a concurrent one.
const COMMIT_ATTEMPTS: usize = 5;
/// Bound on one HTTP exchange with the catalog.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A REST catalog call failed.
#[derive(Debug, thiserror::Error)]
pub enum RestError {
    /// The catalog could not be reached or did not answer in time.
    #[error("iceberg rest catalog {what}: {message}")]
    Transport {
        /// The call.
        what: String,
        /// The client's error.
        message: String,
    },
    /// The catalog answered with an error.
    #[error("iceberg rest catalog {what}: HTTP {status}: {message}")]
    Status {
        /// The call.
        what: String,
        /// HTTP status.
        status: u16,
        /// The catalog's error message.
        message: String,
    },
    /// The catalog's table is not the lake's, or another writer moved it.
    #[error("iceberg rest catalog: {0}")]
    Diverged(String),
    /// The lake's own metadata of the table could not be read.
    #[error(transparent)]
    Lake(#[from] crate::iceberg::catalog::CatalogError),
    /// An answer that is not what the specification describes.
    #[error("iceberg rest catalog {what}: unexpected answer: {message}")]
    BadResponse {
        /// The call.
        what: String,
        /// What is wrong.
        message: String,
    },
}

impl Classify for RestError {
    fn action(&self) -> Action {
        match self {
            RestError::Transport { .. } => Action::Backoff,
            RestError::Lake(e) => e.action(),
            // Busy, overloaded, timed out, or lost to a concurrent commit: again later.
            RestError::Status { status, .. }
                if *status >= 500 || matches!(*status, 408 | 409 | 429) =>
            {
                Action::Backoff
            }
            RestError::Status { .. } | RestError::Diverged(_) | RestError::BadResponse { .. } => {
                Action::Stop
            }
        }
    }
}

/// What the catalog's table needs to match the lake's.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// The catalog does not have the table: register the lake's metadata file.
    Register,
    /// The catalog's table is the lake's.
    UpToDate,
    /// One commit: its requirements and updates, as the specification's JSON.
    Commit {
        /// What the catalog must still hold for the updates to apply.
        requirements: Vec<Value>,
        /// The changes.
        updates: Vec<Value>,
    },
}

/// What brings the catalog's table (`remote`, `None` when it has none) to the lake's
/// (`ours`).
pub fn plan(remote: Option<&TableMetadata>, ours: &TableMetadata) -> Result<Plan, RestError> {
    let Some(remote) = remote else {
        return Ok(Plan::Register);
    };
    if remote.table_uuid != ours.table_uuid {
        return Err(RestError::Diverged(format!(
            "the catalog's table has uuid {}, the lake's {}: it is another table (drop it from the catalog, or set catalog.namespace to another namespace)",
            remote.table_uuid, ours.table_uuid
        )));
    }
    let our_ids: BTreeSet<i64> = ours.snapshots.iter().map(|s| s.snapshot_id).collect();
    let their_ids: BTreeSet<i64> = remote.snapshots.iter().map(|s| s.snapshot_id).collect();
    // A snapshot the lake does not list is one the lake expired, unless slot2lake never
    // wrote it (no `slot2lake.lsn` in its summary, or newer than the lake's last
    // commit): another writer's, which removing would silently drop.
    if let Some(foreign) = remote.snapshots.iter().find(|s| {
        !our_ids.contains(&s.snapshot_id)
            && (spec::lsn_of(s).is_none() || s.sequence_number > ours.last_sequence_number)
    }) {
        return Err(RestError::Diverged(format!(
            "the catalog's table has snapshot {} (sequence number {}) that slot2lake did not commit: another writer uses it; slot2lake must be its only writer (drop the table from the catalog and slot2lake registers it again)",
            foreign.snapshot_id, foreign.sequence_number
        )));
    }

    let mut updates = Vec::new();
    let their_schemas: BTreeSet<i32> = remote.schemas.iter().map(|s| s.schema_id).collect();
    for s in ours
        .schemas
        .iter()
        .filter(|s| !their_schemas.contains(&s.schema_id))
    {
        updates.push(
            json!({"action": "add-schema", "schema": s, "last-column-id": ours.last_column_id}),
        );
    }
    if remote.current_schema_id != ours.current_schema_id {
        updates.push(json!({"action": "set-current-schema", "schema-id": ours.current_schema_id}));
    }
    let their_specs: BTreeSet<i32> = remote.partition_specs.iter().map(|s| s.spec_id).collect();
    for s in ours
        .partition_specs
        .iter()
        .filter(|s| !their_specs.contains(&s.spec_id))
    {
        updates.push(json!({"action": "add-spec", "spec": s}));
    }
    if remote.default_spec_id != ours.default_spec_id {
        updates.push(json!({"action": "set-default-spec", "spec-id": ours.default_spec_id}));
    }
    let mut added: Vec<_> = ours
        .snapshots
        .iter()
        .filter(|s| !their_ids.contains(&s.snapshot_id))
        .collect();
    added.sort_by_key(|s| s.sequence_number);
    for s in added {
        updates.push(json!({"action": "add-snapshot", "snapshot": s}));
    }
    if remote.current_snapshot_id != ours.current_snapshot_id {
        if let Some(id) = ours.current_snapshot_id {
            updates.push(json!({"action": "set-snapshot-ref", "ref-name": "main", "type": "branch", "snapshot-id": id}));
        }
    }
    let expired: Vec<i64> = their_ids.difference(&our_ids).copied().collect();
    if !expired.is_empty() {
        updates.push(json!({"action": "remove-snapshots", "snapshot-ids": expired}));
    }
    let properties: BTreeMap<&String, &String> = ours
        .properties
        .iter()
        .filter(|(k, v)| remote.properties.get(*k) != Some(*v))
        .collect();
    if !properties.is_empty() {
        updates.push(json!({"action": "set-properties", "updates": properties}));
    }
    if updates.is_empty() {
        return Ok(Plan::UpToDate);
    }
    Ok(Plan::Commit {
        requirements: vec![
            json!({"type": "assert-table-uuid", "uuid": ours.table_uuid}),
            json!({"type": "assert-ref-snapshot-id", "ref": "main", "snapshot-id": remote.current_snapshot_id}),
        ],
        updates,
    })
}

/// A connection to the configured catalog, its prefix and credentials resolved.
pub struct RestCatalog {
    http: reqwest::Client,
    /// `<uri>/v1/<prefix>/namespaces/<namespace>`.
    namespace_url: String,
    /// `<uri>/v1/<prefix>/namespaces`.
    namespaces_url: String,
    namespace: Vec<String>,
    authorization: Option<String>,
}

impl std::fmt::Debug for RestCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestCatalog")
            .field("namespace_url", &self.namespace_url)
            .finish_non_exhaustive()
    }
}

/// `GET /v1/config`'s answer.
#[derive(Deserialize, Default)]
struct ConfigResponse {
    #[serde(default)]
    defaults: BTreeMap<String, String>,
    #[serde(default)]
    overrides: BTreeMap<String, String>,
}

/// A table as the catalog returns it (its other fields are not needed).
#[derive(Deserialize)]
struct LoadTableResponse {
    metadata: TableMetadata,
}

/// An error body of the specification.
#[derive(Deserialize)]
struct ErrorResponse {
    error: ErrorModel,
}

#[derive(Deserialize)]
struct ErrorModel {
    message: String,
    #[serde(rename = "type", default)]
    kind: String,
}

impl RestCatalog {
    /// Signs in (OAuth2 client credentials, when configured) and reads the catalog's
    /// configuration for the warehouse (its `prefix` and `uri` overrides).
    pub async fn connect(config: &RestCatalogConfig) -> Result<Self, RestError> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| transport("building the HTTP client", e))?;
        let authorization = match &config.auth {
            RestAuth::None => None,
            RestAuth::Token(t) => Some(format!("Bearer {t}")),
            RestAuth::ClientCredentials {
                uri,
                id,
                secret,
                scope,
            } => Some(format!(
                "Bearer {}",
                token(&http, uri, id, secret, scope).await?
            )),
        };
        let what = "reading /v1/config";
        let mut req = http.get(format!("{}/v1/config", config.uri));
        if let Some(w) = &config.warehouse {
            req = req.query(&[("warehouse", w)]);
        }
        if let Some(a) = &authorization {
            req = req.header(reqwest::header::AUTHORIZATION, a);
        }
        let answer = req.send().await.map_err(|e| transport(what, e))?;
        let conf: ConfigResponse = parse(what, answer).await?;
        let setting = |k: &str| conf.overrides.get(k).or(conf.defaults.get(k)).cloned();
        let uri = setting("uri").unwrap_or_else(|| config.uri.clone());
        let uri = uri.trim_end_matches('/');
        let base = match setting("prefix").filter(|p| !p.is_empty()) {
            Some(p) => format!("{uri}/v1/{}", segment(&p)),
            None => format!("{uri}/v1"),
        };
        let ns = config
            .namespace
            .iter()
            .map(|l| segment(l))
            .collect::<Vec<_>>()
            .join("%1F");
        Ok(Self {
            http,
            namespace_url: format!("{base}/namespaces/{ns}"),
            namespaces_url: format!("{base}/namespaces"),
            namespace: config.namespace.clone(),
            authorization,
        })
    }

    /// The catalog of `config`, connected, when `catalog.kind = "iceberg-rest"`.
    pub async fn configured(config: &Config) -> Result<Option<Self>, RestError> {
        match &config.catalog.target {
            Catalog::IcebergRest(rest) => Ok(Some(Self::connect(rest).await?)),
            _ => Ok(None),
        }
    }

    fn request(&self, method: reqwest::Method, url: String) -> reqwest::RequestBuilder {
        let req = self.http.request(method, url);
        match &self.authorization {
            Some(a) => req.header(reqwest::header::AUTHORIZATION, a),
            None => req,
        }
    }

    /// The namespace's name as written in the config.
    pub fn namespace(&self) -> String {
        self.namespace.join(".")
    }

    /// Whether the namespace exists.
    pub async fn namespace_exists(&self) -> Result<bool, RestError> {
        let what = format!("reading namespace {}", self.namespace());
        let found: Option<Value> = self.get_if_found(&what, self.namespace_url.clone()).await?;
        Ok(found.is_some())
    }

    /// Table `name`'s metadata as the catalog has it; `None` when it has no such table.
    pub async fn load(&self, name: &str) -> Result<Option<TableMetadata>, RestError> {
        let what = format!("loading table {}.{name}", self.namespace());
        let found: Option<LoadTableResponse> =
            self.get_if_found(&what, self.table_url(name)).await?;
        found
            .map(|t| {
                TableMetadata::checked(t.metadata).map_err(|e| RestError::BadResponse {
                    what,
                    message: e.to_string(),
                })
            })
            .transpose()
    }

    /// `GET url`'s answer; `None` for a 404.
    async fn get_if_found<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        url: String,
    ) -> Result<Option<T>, RestError> {
        let answer = self
            .request(reqwest::Method::GET, url)
            .send()
            .await
            .map_err(|e| transport(what, e))?;
        if answer.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        parse(what, answer).await.map(Some)
    }

    fn table_url(&self, name: &str) -> String {
        format!("{}/tables/{}", self.namespace_url, segment(name))
    }

    /// Brings table `name` to the lake's current metadata of the table in `table_key`,
    /// registering it when the catalog lacks it; a commit that loses to a concurrent
    /// one (`run` and `compact` both pointing) is rebuilt on a fresh read of both.
    ///
    /// The catalog is read before the lake: the catalog only ever gets states the lake
    /// already had, so the lake read after it holds every snapshot slot2lake gave it,
    /// and a snapshot only the catalog has is another writer's.
    pub async fn point(
        &self,
        name: &str,
        lake: &LocalCatalog,
        table_key: &str,
    ) -> Result<(), RestError> {
        let full = format!("{}.{name}", self.namespace());
        for _ in 0..COMMIT_ATTEMPTS {
            let remote = self.load(name).await?;
            let Some(ours) = lake.load(table_key).await? else {
                return Ok(());
            };
            let sent = match plan(remote.as_ref(), &ours.metadata)? {
                Plan::UpToDate => return Ok(()),
                Plan::Register => self.register(name, &lake.uri(&ours.metadata_key)).await,
                Plan::Commit {
                    requirements,
                    updates,
                } => {
                    let body = json!({
                        "identifier": {"namespace": self.namespace, "name": name},
                        "requirements": requirements,
                        "updates": updates,
                    });
                    let what = format!("committing to table {full}");
                    self.send(&what, reqwest::Method::POST, self.table_url(name), &body)
                        .await
                }
            };
            match sent {
                Ok(()) => {
                    tracing::info!(table = %full, snapshot = ?ours.metadata.current_snapshot_id, "iceberg rest catalog: table at the lake's commit");
                    return Ok(());
                }
                // Lost to a concurrent commit or registration: read it again.
                Err(RestError::Status { status: 409, .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(RestError::Status {
            what: format!("committing to table {full}"),
            status: 409,
            message: format!("{COMMIT_ATTEMPTS} commits in a row lost to another writer"),
        })
    }

    /// Registers the lake's metadata file as table `name`, creating the namespace first
    /// when the catalog does not have it.
    async fn register(&self, name: &str, metadata_location: &str) -> Result<(), RestError> {
        let what = format!("registering table {}.{name}", self.namespace());
        let body = json!({"name": name, "metadata-location": metadata_location});
        let url = format!("{}/register", self.namespace_url);
        match self
            .send(&what, reqwest::Method::POST, url.clone(), &body)
            .await
        {
            Err(RestError::Status { status: 404, .. }) => {
                self.create_namespace().await?;
                self.send(&what, reqwest::Method::POST, url, &body).await
            }
            other => other,
        }
    }

    async fn create_namespace(&self) -> Result<(), RestError> {
        let what = format!("creating namespace {}", self.namespace());
        let body = json!({"namespace": self.namespace, "properties": {}});
        match self
            .send(
                &what,
                reqwest::Method::POST,
                self.namespaces_url.clone(),
                &body,
            )
            .await
        {
            // Created meanwhile by someone else: as good.
            Err(RestError::Status { status: 409, .. }) => Ok(()),
            other => other,
        }
    }

    async fn send(
        &self,
        what: &str,
        method: reqwest::Method,
        url: String,
        body: &Value,
    ) -> Result<(), RestError> {
        let answer = self
            .request(method, url)
            .json(body)
            .send()
            .await
            .map_err(|e| transport(what, e))?;
        let _: Value = parse(what, answer).await?;
        Ok(())
    }
}

/// Whether the catalog answers with these credentials, and has the namespace.
pub async fn check(config: &RestCatalogConfig) -> Readiness {
    let at = &config.uri;
    let rest = match RestCatalog::connect(config).await {
        Ok(r) => r,
        Err(e) => {
            return Readiness::Broken(format!(
                "{e}: check catalog.uri ({at}), catalog.warehouse and the credentials"
            ))
        }
    };
    match rest.namespace_exists().await {
        Ok(true) => Readiness::Ready(format!(
            "iceberg-rest {at}: namespace {:?} exists",
            rest.namespace()
        )),
        Ok(false) => Readiness::WillCreate(format!(
            "iceberg-rest {at}: namespace {:?} will be created",
            rest.namespace()
        )),
        Err(e) => Readiness::Broken(e.to_string()),
    }
}

/// Exchanges client credentials for a token (RFC 6749 section 4.4).
async fn token(
    http: &reqwest::Client,
    uri: &str,
    id: &str,
    secret: &str,
    scope: &str,
) -> Result<String, RestError> {
    #[derive(Deserialize)]
    struct Token {
        access_token: String,
    }
    let what = "signing in (OAuth2 client credentials)";
    let answer = http
        .post(uri)
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", id),
            ("client_secret", secret),
            ("scope", scope),
        ])
        .send()
        .await
        .map_err(|e| transport(what, e))?;
    let t: Token = parse(what, answer).await?;
    Ok(t.access_token)
}

fn transport(what: &str, e: reqwest::Error) -> RestError {
    // Without the URL (a user's URI may carry credentials), with its causes: reqwest's
    // own message is only "error sending request".
    let e = e.without_url();
    let mut message = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        message = format!("{message}: {c}");
        cause = c.source();
    }
    RestError::Transport {
        what: what.to_string(),
        message,
    }
}

/// The answer's JSON body, or its error as [`RestError::Status`].
async fn parse<T: serde::de::DeserializeOwned>(
    what: &str,
    answer: reqwest::Response,
) -> Result<T, RestError> {
    let status = answer.status();
    let bytes = answer.bytes().await.map_err(|e| transport(what, e))?;
    if !status.is_success() {
        let message = match serde_json::from_slice::<ErrorResponse>(&bytes) {
            Ok(e) if e.error.kind.is_empty() => e.error.message,
            Ok(e) => format!("{}: {}", e.error.kind, e.error.message),
            Err(_) => String::from_utf8_lossy(&bytes).chars().take(500).collect(),
        };
        return Err(RestError::Status {
            what: what.to_string(),
            status: status.as_u16(),
            message,
        });
    }
    // Some answers (204) have no body.
    let bytes = if bytes.is_empty() {
        &b"null"[..]
    } else {
        &bytes[..]
    };
    serde_json::from_slice(bytes).map_err(|e| RestError::BadResponse {
        what: what.to_string(),
        message: e.to_string(),
    })
}

/// One path segment, percent-encoded.
fn segment(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};

    use arrow_schema::{DataType, Field, Schema as ArrowSchema};

    use super::*;
    use crate::iceberg::spec::Snapshot;

    fn table() -> TableMetadata {
        let arrow = ArrowSchema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("day", DataType::Date32, true),
        ]);
        let (schema, _) = spec::schema_for(&arrow, None).expect("schema");
        let part = spec::day_spec(&schema, "day").expect("spec");
        TableMetadata::new("/lake/t", schema, part, BTreeMap::new())
    }

    /// `m` with one more snapshot, slot2lake's (`lsn`) or another writer's.
    fn commit_by(m: TableMetadata, lsn: Option<&str>) -> TableMetadata {
        let mut summary = BTreeMap::from([("operation".to_string(), "append".to_string())]);
        if let Some(lsn) = lsn {
            summary.insert(spec::LSN_PROPERTY.into(), lsn.into());
        }
        let s = Snapshot {
            snapshot_id: m.new_snapshot_id(),
            parent_snapshot_id: m.current_snapshot_id,
            sequence_number: m.next_sequence_number(),
            timestamp_ms: 1,
            manifest_list: "x".into(),
            summary,
            schema_id: Some(m.current_schema_id),
        };
        m.with_snapshot(s, None)
    }

    fn commit(m: TableMetadata) -> TableMetadata {
        commit_by(m, Some("0/10"))
    }

    fn actions(p: &Plan) -> Vec<String> {
        match p {
            Plan::Commit { updates, .. } => updates
                .iter()
                .map(|u| u["action"].as_str().unwrap_or("?").to_string())
                .collect(),
            other => vec![format!("{other:?}")],
        }
    }

    #[test]
    fn the_catalog_gets_what_it_lacks_of_the_lakes_table() {
        let t0 = table();
        let t1 = commit(t0.clone());
        let t2 = commit(t1.clone());
        let t3 = commit(t2.clone());
        let first = t1.snapshots[0].snapshot_id;
        let t3_expired = t3.clone().without_snapshots(&HashSet::from([first]), None);
        let wider = {
            let arrow = ArrowSchema::new(vec![
                Field::new("id", DataType::Int64, false),
                Field::new("day", DataType::Date32, true),
                Field::new("note", DataType::Utf8, true),
            ]);
            let (s, last) = spec::schema_for(&arrow, Some(&t3)).expect("schema");
            commit(t3.clone().with_schema(s, last))
        };
        let mut other = t1.clone();
        other.table_uuid = "another".into();
        let mut props = t1.clone();
        props.properties.insert("k".into(), "v".into());
        // Another writer committed through the catalog: newer than the lake's last commit,
        // or at the same sequence number as the lake's next (both moved on from t1).
        let foreign = commit_by(t1.clone(), None);
        let foreign_with_our_lsn = commit_by(t2.clone(), Some("0/10"));

        // (case, the catalog's table, the lake's, the updates planned or the error's words)
        type Case<'a> = (
            &'a str,
            Option<&'a TableMetadata>,
            &'a TableMetadata,
            Result<Vec<&'a str>, &'a str>,
        );
        let cases: Vec<Case> = vec![
            ("not in the catalog", None, &t1, Ok(vec!["Register"])),
            ("the same", Some(&t3), &t3, Ok(vec!["UpToDate"])),
            (
                "one commit behind",
                Some(&t1),
                &t2,
                Ok(vec!["add-snapshot", "set-snapshot-ref"]),
            ),
            (
                "registered empty, then a commit",
                Some(&t0),
                &t1,
                Ok(vec!["add-snapshot", "set-snapshot-ref"]),
            ),
            (
                "two behind (a crash skipped one)",
                Some(&t1),
                &t3,
                Ok(vec!["add-snapshot", "add-snapshot", "set-snapshot-ref"]),
            ),
            (
                "the lake expired a snapshot",
                Some(&t3),
                &t3_expired,
                Ok(vec!["remove-snapshots"]),
            ),
            (
                "behind and expired",
                Some(&t1),
                &t3_expired,
                Ok(vec![
                    "add-snapshot",
                    "add-snapshot",
                    "set-snapshot-ref",
                    "remove-snapshots",
                ]),
            ),
            (
                "a column added",
                Some(&t3),
                &wider,
                Ok(vec![
                    "add-schema",
                    "set-current-schema",
                    "add-snapshot",
                    "set-snapshot-ref",
                ]),
            ),
            (
                "a property set",
                Some(&t1),
                &props,
                Ok(vec!["set-properties"]),
            ),
            (
                "another table under the name",
                Some(&other),
                &t1,
                Err("uuid"),
            ),
            (
                "another writer committed",
                Some(&foreign),
                &t1,
                Err("did not commit"),
            ),
            (
                "another writer committed as the lake did",
                Some(&foreign),
                &t2,
                Err("did not commit"),
            ),
            (
                "a newer snapshot claiming to be slot2lake's",
                Some(&foreign_with_our_lsn),
                &t2,
                Err("did not commit"),
            ),
        ];
        for (name, remote, ours, want) in cases {
            match (plan(remote, ours), want) {
                (Ok(p), Ok(want)) => assert_eq!(actions(&p), want, "{name}"),
                (Err(e), Err(want)) => {
                    assert!(e.to_string().contains(want), "{name}: {e}");
                    assert_eq!(e.action(), Action::Stop, "{name}");
                }
                (got, want) => panic!("{name}: {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn a_commit_asserts_the_table_and_the_snapshot_it_was_planned_on() {
        let t0 = table();
        let t1 = commit(t0.clone());
        let t2 = commit(t1.clone());
        let Ok(Plan::Commit {
            requirements,
            updates,
        }) = plan(Some(&t1), &t2)
        else {
            panic!("not a commit");
        };
        assert_eq!(
            requirements,
            vec![
                json!({"type": "assert-table-uuid", "uuid": t1.table_uuid}),
                json!({"type": "assert-ref-snapshot-id", "ref": "main", "snapshot-id": t1.current_snapshot_id}),
            ]
        );
        // The snapshot is sent as the lake has it: its LSN and commit id go along.
        assert_eq!(
            updates[0]["snapshot"],
            serde_json::to_value(t2.current_snapshot().expect("current")).expect("json")
        );
        assert_eq!(updates[1]["snapshot-id"], json!(t2.current_snapshot_id));
        // An empty catalog table: the ref must not exist yet.
        let Ok(Plan::Commit { requirements, .. }) = plan(Some(&t0), &t1) else {
            panic!("not a commit");
        };
        assert_eq!(requirements[1]["snapshot-id"], Value::Null);
    }

    #[test]
    fn errors_say_whether_to_retry() {
        let status = |status| RestError::Status {
            what: "x".into(),
            status,
            message: String::new(),
        };
        for (e, want) in [
            (status(503), Action::Backoff),
            (status(500), Action::Backoff),
            (status(429), Action::Backoff),
            (status(409), Action::Backoff),
            (status(401), Action::Stop),
            (status(403), Action::Stop),
            (status(400), Action::Stop),
            (
                RestError::Transport {
                    what: "x".into(),
                    message: "refused".into(),
                },
                Action::Backoff,
            ),
        ] {
            assert_eq!(e.action(), want, "{e}");
        }
    }

    #[test]
    fn names_are_one_path_segment_each() {
        assert_eq!(segment("orders"), "orders");
        assert_eq!(segment("a b/c"), "a%20b%2Fc");
    }
}
