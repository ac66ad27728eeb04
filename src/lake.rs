//! The lake's object store: data files, watermarks and slot2lake's own `_slot2lake/` area.
//!
//! A `file://` lake is a LocalFileSystem store plus direct file access, so that a
//! finished Parquet file is moved into place with one atomic rename and metadata
//! writes are fsynced; other stores go through object_store uploads.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::prefix::PrefixStore;
use object_store::RetryConfig;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::config::{OutputConfig, OutputUrl};
use crate::retry::{Action, Classify};

/// An object-store or filesystem failure.
#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    /// The output URL cannot be used.
    #[error("output.url {url:?}: {message}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong.
        message: String,
    },
    /// An object-store call failed.
    #[error("lake {op} {key}: {source}")]
    Store {
        /// What was being done.
        op: &'static str,
        /// The object.
        key: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
    /// A local file operation failed.
    #[error("lake {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// Files up to this size are uploaded in one conditional PUT; larger ones in parts.
const SINGLE_PUT_MAX: u64 = 16 * 1024 * 1024;
/// Part size of multipart uploads (S3's minimum is 5 MiB).
const PART_SIZE: usize = 8 * 1024 * 1024;

/// Whether a publish wrote the file or found it already there (a retried flush).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// The file is new.
    Written,
    /// A file of that name existed and was left untouched.
    AlreadyThere,
}

/// The lake: where data files and metadata go.
#[derive(Debug, Clone)]
pub struct Lake {
    store: Arc<dyn ObjectStore>,
    local_root: Option<PathBuf>,
    url: String,
    metadata_prefix: String,
    /// Files of a `file://` lake moved into place since the last [`Lake::sync_dirs`].
    unsynced: Arc<std::sync::Mutex<Unsynced>>,
}

/// Files and folders whose durability [`Lake::sync_dirs`] still owes.
#[derive(Debug, Default)]
struct Unsynced {
    files: Vec<PathBuf>,
    dirs: std::collections::BTreeSet<PathBuf>,
    /// Files and folders synced so far (tests check that nothing owed is dropped).
    synced: usize,
}

/// Threads that fsync published files at once.
const SYNC_THREADS: usize = 16;

impl Lake {
    /// Opens the lake named by `[output]`; a `file://` lake's folder is created.
    pub async fn open(output: &OutputConfig) -> Result<Self, LakeError> {
        let url = output.url.as_str().to_string();
        let url_err = |message: String| LakeError::Url {
            url: url.clone(),
            message,
        };
        let metadata_prefix = output.metadata_prefix.trim_matches('/').to_string();
        let root = match &output.url {
            OutputUrl::S3 { bucket, prefix, .. } => {
                let sdk = crate::aws::sdk_config(output.region.as_deref()).await;
                let store = s3_store(output, bucket, &sdk).map_err(|e| url_err(e.to_string()))?;
                let store: Arc<dyn ObjectStore> = match prefix.as_str() {
                    "" => Arc::new(store),
                    p => Arc::new(PrefixStore::new(store, p)),
                };
                return Ok(Self {
                    store,
                    local_root: None,
                    url,
                    metadata_prefix,
                    unsynced: Arc::default(),
                });
            }
            OutputUrl::File { path, .. } => path.clone(),
        };
        let root = if root.is_absolute() {
            root
        } else {
            std::env::current_dir()
                .map_err(|e| url_err(e.to_string()))?
                .join(root)
        };
        std::fs::create_dir_all(&root)
            .map_err(|e| url_err(format!("cannot create the folder: {e}")))?;
        let store = LocalFileSystem::new_with_prefix(&root).map_err(|e| url_err(e.to_string()))?;
        Ok(Self {
            store: Arc::new(store),
            local_root: Some(root),
            url,
            metadata_prefix,
            unsynced: Arc::default(),
        })
    }

    /// The output URL as configured.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The lake's folder, for a `file://` lake.
    pub fn local_root(&self) -> Option<&Path> {
        self.local_root.as_deref()
    }

    /// The underlying object store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Key of a table's metadata file: `etl-metadata/<table>/<file>`.
    pub fn metadata_key(&self, table: &str, file: &str) -> String {
        format!("{}/{table}/{file}", self.metadata_prefix)
    }

    /// Reads an object, `None` when it does not exist.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, LakeError> {
        let path = ObjPath::from(key);
        match self.store.get(&path).await {
            Ok(r) => r
                .bytes()
                .await
                .map(Some)
                .map_err(|source| store_err("read", key, source)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(source) => Err(store_err("read", key, source)),
        }
    }

    /// Writes (or replaces) a small object durably.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), LakeError> {
        self.store
            .put(&ObjPath::from(key), PutPayload::from_bytes(bytes))
            .await
            .map_err(|source| store_err("write", key, source))?;
        if let Some(path) = self.local_path(key) {
            fsync_file_and_dir(&path)?;
        }
        Ok(())
    }

    /// Writes a small object only if none of that name exists; `false` when one does.
    pub async fn create(&self, key: &str, bytes: Bytes) -> Result<bool, LakeError> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(&ObjPath::from(key), PutPayload::from_bytes(bytes), opts)
            .await
        {
            Ok(_) => {
                if let Some(path) = self.local_path(key) {
                    fsync_file_and_dir(&path)?;
                }
                Ok(true)
            }
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(source) => Err(store_err("create", key, source)),
        }
    }

    /// Deletes an object; a missing object is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), LakeError> {
        match self.store.delete(&ObjPath::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(store_err("delete", key, source)),
        }
    }

    /// Keys under a prefix (recursively).
    pub async fn list(&self, prefix: &str) -> Result<Vec<object_store::ObjectMeta>, LakeError> {
        let p = ObjPath::from(prefix);
        let list: Vec<_> = self
            .store
            .list(Some(&p))
            .try_collect()
            .await
            .map_err(|source| store_err("list", prefix, source))?;
        Ok(list)
    }

    /// Whether an object exists.
    pub async fn exists(&self, key: &str) -> Result<bool, LakeError> {
        if let Some(path) = self.local_path(key) {
            return Ok(path.exists());
        }
        match self.store.head(&ObjPath::from(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(source) => Err(store_err("head", key, source)),
        }
    }

    /// The size of an object in bytes.
    pub async fn size(&self, key: &str) -> Result<u64, LakeError> {
        self.store
            .head(&ObjPath::from(key))
            .await
            .map(|m| m.size)
            .map_err(|source| store_err("head", key, source))
    }

    /// Moves a finished local file to `key` unless an object of that name exists.
    ///
    /// The local file is removed either way. An existing object is never replaced:
    /// readers may be reading it, and a retried flush produces the same content. In a
    /// `file://` lake the file is durable only after [`sync_dirs`](Self::sync_dirs),
    /// which whoever records the files as written calls first.
    pub async fn publish(&self, file: &Path, key: &str) -> Result<Published, LakeError> {
        if let Some(dest) = self.local_path(key) {
            if dest.exists() {
                remove_file(file)?;
                return Ok(Published::AlreadyThere);
            }
            self.move_local(file, &dest)?;
            return Ok(Published::Written);
        }
        let size = std::fs::metadata(file)
            .map_err(|source| io_err("stat", file, source))?
            .len();
        let res = if size <= SINGLE_PUT_MAX {
            let bytes = std::fs::read(file).map_err(|source| io_err("read", file, source))?;
            let opts = PutOptions {
                mode: PutMode::Create,
                ..Default::default()
            };
            self.store
                .put_opts(&ObjPath::from(key), PutPayload::from(bytes), opts)
                .await
                .map(|_| ())
        } else if self.exists(key).await? {
            // Multipart uploads cannot be conditional; one writer per slot makes the check enough.
            Err(object_store::Error::AlreadyExists {
                path: key.to_string(),
                source: "exists".into(),
            })
        } else {
            self.upload_multipart(file, key).await
        };
        remove_file(file)?;
        match res {
            Ok(()) => Ok(Published::Written),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(Published::AlreadyThere),
            Err(source) => Err(store_err("upload", key, source)),
        }
    }

    /// Copies a local file to `key`, replacing an object of that name.
    pub async fn upload_file(&self, file: &Path, key: &str) -> Result<(), LakeError> {
        if let Some(dest) = self.local_path(key) {
            let parent = dest.parent().unwrap_or(Path::new("/"));
            std::fs::create_dir_all(parent).map_err(|source| io_err("create", parent, source))?;
            let tmp = dest.with_extension("upload");
            std::fs::copy(file, &tmp).map_err(|source| io_err("copy", &tmp, source))?;
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(|source| io_err("fsync", &tmp, source))?;
            std::fs::rename(&tmp, &dest).map_err(|source| io_err("rename", &dest, source))?;
            return fsync_dir(parent);
        }
        let size = std::fs::metadata(file)
            .map_err(|source| io_err("stat", file, source))?
            .len();
        let res = if size <= SINGLE_PUT_MAX {
            let bytes = std::fs::read(file).map_err(|source| io_err("read", file, source))?;
            self.store
                .put(&ObjPath::from(key), PutPayload::from(bytes))
                .await
                .map(|_| ())
        } else {
            self.upload_multipart(file, key).await
        };
        res.map_err(|source| store_err("upload", key, source))
    }

    /// Uploads a large file in parts, read from disk a part at a time.
    async fn upload_multipart(&self, file: &Path, key: &str) -> Result<(), object_store::Error> {
        use tokio::io::AsyncReadExt;
        let upload = self.store.put_multipart(&ObjPath::from(key)).await?;
        let mut writer = object_store::WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut f =
            tokio::fs::File::open(file)
                .await
                .map_err(|e| object_store::Error::Generic {
                    store: "local",
                    source: Box::new(e),
                })?;
        let mut buf = vec![0u8; PART_SIZE];
        loop {
            let n = f
                .read(&mut buf)
                .await
                .map_err(|e| object_store::Error::Generic {
                    store: "local",
                    source: Box::new(e),
                })?;
            if n == 0 {
                break;
            }
            writer.wait_for_capacity(2).await?;
            writer.write(&buf[..n]);
        }
        writer.finish().await.map(|_| ())
    }

    /// Moves the folder `from` to `to` in one rename when `to` does not exist (a
    /// `file://` lake); `false` when it exists or the lake is an object store, where
    /// files are moved one by one.
    pub fn move_folder(&self, from: &str, to: &str) -> Result<bool, LakeError> {
        let (Some(src), Some(dest)) = (self.local_path(from), self.local_path(to)) else {
            return Ok(false);
        };
        if dest.exists() || !src.is_dir() {
            return Ok(false);
        }
        let parent = dest.parent().unwrap_or(Path::new("/"));
        self.create_dirs(parent)?;
        std::fs::rename(&src, &dest).map_err(|source| io_err("rename", &dest, source))?;
        let mut unsynced = self.unsynced.lock().unwrap_or_else(|p| p.into_inner());
        unsynced.dirs.insert(parent.to_path_buf());
        if let Some(old_parent) = src.parent() {
            unsynced.dirs.insert(old_parent.to_path_buf());
        }
        Ok(true)
    }

    /// Moves an object to a new key (staging → final); an existing destination wins.
    pub async fn rename(&self, from: &str, to: &str) -> Result<Published, LakeError> {
        if let (Some(src), Some(dest)) = (self.local_path(from), self.local_path(to)) {
            if dest.exists() {
                remove_file(&src)?;
                return Ok(Published::AlreadyThere);
            }
            self.move_local(&src, &dest)?;
            return Ok(Published::Written);
        }
        let (f, t) = (ObjPath::from(from), ObjPath::from(to));
        let res = match self.store.copy_if_not_exists(&f, &t).await {
            Err(object_store::Error::NotSupported { .. })
            | Err(object_store::Error::NotImplemented { .. }) => {
                if self.exists(to).await? {
                    Err(object_store::Error::AlreadyExists {
                        path: to.to_string(),
                        source: "destination exists".into(),
                    })
                } else {
                    self.store.copy(&f, &t).await
                }
            }
            other => other,
        };
        let published = match res {
            Ok(()) => Published::Written,
            Err(object_store::Error::AlreadyExists { .. }) => Published::AlreadyThere,
            Err(source) => return Err(store_err("copy", to, source)),
        };
        self.delete(from).await?;
        Ok(published)
    }

    /// Renames a local file into place, creating its folder; the folder is synced later.
    fn move_local(&self, from: &Path, to: &Path) -> Result<(), LakeError> {
        let parent = to.parent().unwrap_or(Path::new("/"));
        self.create_dirs(parent)?;
        std::fs::rename(from, to).map_err(|source| io_err("rename", to, source))?;
        let mut unsynced = self.unsynced.lock().unwrap_or_else(|p| p.into_inner());
        unsynced.files.push(to.to_path_buf());
        unsynced.dirs.insert(parent.to_path_buf());
        Ok(())
    }

    /// Creates a local folder and its missing parents. Each new folder's entry is durable
    /// only once its parent is synced, so those parents are noted for
    /// [`sync_dirs`](Self::sync_dirs) (`year=` and `month=` as well as `day=`).
    pub fn create_dirs(&self, dir: &Path) -> Result<(), LakeError> {
        let mut missing = Vec::new();
        let mut d = dir;
        while !d.is_dir() {
            missing.push(d);
            match d.parent() {
                Some(p) => d = p,
                None => break,
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        std::fs::create_dir_all(dir).map_err(|source| io_err("create", dir, source))?;
        let mut unsynced = self.unsynced.lock().unwrap_or_else(|p| p.into_inner());
        for m in missing {
            if let Some(parent) = m.parent() {
                unsynced.dirs.insert(parent.to_path_buf());
            }
        }
        Ok(())
    }

    /// Removes the empty folders under `key` and `key` itself if it ends up empty (a
    /// `file://` lake; object stores have no folders). Best effort: a folder left
    /// behind holds nothing a reader sees.
    pub fn remove_empty_dirs(&self, key: &str) {
        fn prune(dir: &Path) -> bool {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return false;
            };
            let mut empty = true;
            for e in entries.flatten() {
                let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
                empty &= is_dir && prune(&e.path());
            }
            empty && std::fs::remove_dir(dir).is_ok()
        }
        if let Some(dir) = self.local_path(key) {
            prune(&dir);
        }
    }

    /// Records a file written in place in a `file://` lake, for [`sync_dirs`](Self::sync_dirs).
    pub fn note_written(&self, path: &Path) {
        let mut unsynced = self.unsynced.lock().unwrap_or_else(|p| p.into_inner());
        unsynced.files.push(path.to_path_buf());
        if let Some(dir) = path.parent() {
            unsynced.dirs.insert(dir.to_path_buf());
        }
    }

    /// Makes the files published or renamed so far durable, with their folder entries
    /// (`file://` lakes; an object store's upload is durable when it returns). Call it
    /// before recording them as written.
    pub fn sync_dirs(&self) -> Result<(), LakeError> {
        let (files, dirs) = {
            let mut u = self.unsynced.lock().unwrap_or_else(|p| p.into_inner());
            (std::mem::take(&mut u.files), std::mem::take(&mut u.dirs))
        };
        // fsyncs from several threads share journal commits: thousands of files take a
        // fraction of the time one after the other would. Folders after their files; a
        // folder moved whole brings no file but its new parent still needs its sync.
        let dirs: Vec<PathBuf> = dirs.into_iter().collect();
        sync_all(&files)?;
        sync_all(&dirs)?;
        self.unsynced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .synced += files.len() + dirs.len();
        Ok(())
    }

    /// The local file behind a key, for a `file://` lake.
    pub fn local_path(&self, key: &str) -> Option<PathBuf> {
        self.local_root.as_ref().map(|r| r.join(key))
    }
}

/// An S3 store: the AWS chain's credentials, region, endpoint override, encryption, retries.
fn s3_store(
    output: &OutputConfig,
    bucket: &str,
    sdk: &aws_config::SdkConfig,
) -> Result<object_store::aws::AmazonS3, object_store::Error> {
    let region = output
        .region
        .clone()
        .or_else(|| sdk.region().map(|r| r.to_string()))
        .unwrap_or_else(|| "us-east-1".to_string());
    let mut b = AmazonS3Builder::new()
        .with_bucket_name(bucket)
        .with_region(region)
        // One request rides out a blip of about a minute (the default backoff would spend
        // ten retries in 2-3 s); longer outages are the flush's retry policy's job.
        .with_retry(RetryConfig {
            max_retries: output.max_retries,
            retry_timeout: std::time::Duration::from_secs(300),
            backoff: object_store::BackoffConfig {
                init_backoff: std::time::Duration::from_millis(200),
                max_backoff: std::time::Duration::from_secs(15),
                base: 2.0,
            },
        });
    if let Some(creds) = crate::aws::ChainCredentials::from_config(sdk) {
        b = b.with_credentials(creds);
    }
    if let Some(ep) = &output.endpoint {
        b = b
            .with_endpoint(ep)
            .with_allow_http(ep.starts_with("http://"))
            .with_virtual_hosted_style_request(false);
    }
    match (output.sse.as_deref(), &output.sse_kms_key_id) {
        (Some("aws:kms"), Some(key)) => b = b.with_sse_kms_encryption(key),
        (Some(sse), _) => {
            let key: AmazonS3ConfigKey = "aws_server_side_encryption".parse()?;
            b = b.with_config(key, sse);
        }
        (None, _) => {}
    }
    b.build()
}

fn store_err(op: &'static str, key: &str, source: object_store::Error) -> LakeError {
    LakeError::Store {
        op,
        key: key.to_string(),
        source,
    }
}

fn io_err(op: &'static str, path: &Path, source: io::Error) -> LakeError {
    LakeError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn remove_file(path: &Path) -> Result<(), LakeError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(io_err("remove", path, source)),
    }
}

/// fsyncs files (or folders) on up to [`SYNC_THREADS`] threads.
fn sync_all(paths: &[PathBuf]) -> Result<(), LakeError> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let work = || -> Result<(), LakeError> {
        while let Some(path) = paths.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) {
            std::fs::File::open(path)
                .and_then(|f| f.sync_all())
                .map_err(|source| io_err("fsync", path, source))?;
        }
        Ok(())
    };
    std::thread::scope(|scope| {
        let threads: Vec<_> = (0..SYNC_THREADS.min(paths.len()))
            .map(|_| scope.spawn(work))
            .collect();
        for t in threads {
            t.join().unwrap_or_else(|_| {
                Err(io_err(
                    "fsync",
                    Path::new("(lake)"),
                    io::Error::other("fsync thread panicked"),
                ))
            })?;
        }
        Ok(())
    })
}

fn fsync_dir(dir: &Path) -> Result<(), LakeError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| io_err("fsync", dir, source))
}

fn fsync_file_and_dir(path: &Path) -> Result<(), LakeError> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|source| io_err("fsync", path, source))?;
    fsync_dir(path.parent().unwrap_or(Path::new("/")))
}

impl Classify for LakeError {
    fn action(&self) -> Action {
        match self {
            LakeError::Url { .. } => Action::Stop,
            LakeError::Store { source, .. } => source.action(),
            LakeError::Io { source, .. } => crate::retry::io_action(source),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn local_lake(root: &Path) -> Lake {
        let text = format!("url = \"file://{}\"", root.display());
        let output: OutputConfig = toml::from_str(&text).expect("output");
        Lake::open(&output).await.expect("lake")
    }

    fn unsynced_dirs(lake: &Lake) -> Vec<PathBuf> {
        let u = lake.unsynced.lock().unwrap_or_else(|p| p.into_inner());
        u.dirs.iter().cloned().collect()
    }

    #[tokio::test]
    async fn new_folders_get_their_parents_synced_and_a_folder_moves_only_onto_nothing() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = tmp.path().canonicalize().expect("root");
        let lake = local_lake(&root).await;
        let day = root.join("stage/t/year=2025/month=01/day=02");
        lake.create_dirs(&day).expect("create");
        // Every created folder's entry lives in its parent: all of them are synced.
        let dirs = unsynced_dirs(&lake);
        for parent in [
            "",
            "stage",
            "stage/t",
            "stage/t/year=2025",
            "stage/t/year=2025/month=01",
        ] {
            let p = if parent.is_empty() {
                root.clone()
            } else {
                root.join(parent)
            };
            assert!(dirs.contains(&p), "{parent:?} not synced: {dirs:?}");
        }
        lake.sync_dirs().expect("sync");
        std::fs::write(day.join("f.parquet"), b"x").expect("file");

        assert!(
            lake.move_folder("stage/t", "t").expect("move"),
            "moved whole"
        );
        // The rename lives in the folders on both sides: syncing the lake syncs them.
        let synced = |lake: &Lake| lake.unsynced.lock().map(|u| u.synced).unwrap_or(0);
        let before = synced(&lake);
        lake.sync_dirs().expect("sync");
        assert_eq!(synced(&lake), before + 2, "lake root and stage/ synced");
        assert!(root.join("t/year=2025/month=01/day=02/f.parquet").is_file());
        assert!(!root.join("stage/t").exists());
        // The destination exists now: a second staged copy is not moved over it.
        lake.create_dirs(&root.join("stage/t/x")).expect("create");
        assert!(!lake.move_folder("stage/t", "t").expect("move"));
        assert!(!lake.move_folder("stage/none", "u").expect("move"));
        assert!(root.join("stage/t/x").is_dir());

        // Empty folders go; a folder holding a file stays, with its parents.
        lake.create_dirs(&root.join("stage/a/b/c")).expect("create");
        std::fs::write(root.join("stage/t/x/keep"), b"x").expect("file");
        lake.remove_empty_dirs("stage");
        assert!(!root.join("stage/a").exists());
        assert!(root.join("stage/t/x/keep").is_file());
        std::fs::remove_file(root.join("stage/t/x/keep")).expect("rm");
        lake.remove_empty_dirs("stage");
        assert!(!root.join("stage").exists());
    }
}
