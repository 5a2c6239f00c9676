//! APT repositories: each environment of a service is a suite (`dists/<env>`)
//! whose packages are the `deb` artifacts of the build the environment runs
//! now and of the few builds it ran before (so an older version can still
//! be pinned).
//!
//! A package is read once, when it is registered as an artifact: its control
//! paragraph is kept in the database (`deb_packages`) and indexes are made
//! from there. What a caller sees of a suite is a [`Generation`]: the
//! deployment it is computed at and the builds it lists, decided here by the
//! same rules as every other answer (public environments and never an
//! embargoed build for callers without a token; the token's scope and sight
//! otherwise). A generation's indexes depend on nothing else, so they are
//! made once per generation and signed with the server's OpenPGP key, which
//! is created on first use.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tug_core::deb::{self, Compression, ControlMember, IndexEntry, IndexFile, Paragraph, ReleaseInfo};
use tug_core::{Action, ArtifactKind, ArtifactName, ArtifactSpec, BuildId, Digest, EnvName, ServiceName};
use tug_db::DebRow;

use super::*;

/// Where the signing key lives and how many builds a suite keeps.
#[derive(Debug, Clone)]
pub struct AptSettings {
    /// The armored secret key (`<data_dir>/apt/signing-key.asc`), created
    /// on first use; `None` keeps a key in memory (tests).
    pub key_file: Option<PathBuf>,
    /// How many builds an environment ran (the current one included) its
    /// suite lists, so `apt-get install pkg=<older version>` works.
    pub keep: usize,
}

impl Default for AptSettings {
    fn default() -> Self {
        AptSettings {
            key_file: None,
            keep: 3,
        }
    }
}

/// How many generations of a suite answer `by-hash` requests: a client that
/// read `InRelease` just before a promotion still finds the indexes it
/// names.
pub const GENERATIONS: usize = 4;

/// One state of a suite as one caller may see it: the builds it lists,
/// current first, and the date of the deployment it is computed at. Made
/// only here, after the caller's access was checked, so holding one is
/// leave to read what it lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    pub service: ServiceName,
    pub environment: EnvName,
    pub date: DateTime<Utc>,
    pub builds: Vec<BuildId>,
}

impl Generation {
    /// Names the generation's content: equal keys, equal indexes.
    pub fn key(&self) -> String {
        let mut h = tug_core::Hasher::new();
        h.update(
            format!(
                "{}\n{}\n{}\n",
                self.service,
                self.environment,
                self.date.timestamp_millis()
            )
            .as_bytes(),
        );
        for b in &self.builds {
            h.update(b.as_str().as_bytes());
            h.update(b"\n");
        }
        h.finish().hex()
    }
}

/// The signed metadata and indexes of one generation.
#[derive(Debug)]
pub struct AptIndexes {
    pub in_release: String,
    pub release: String,
    pub release_gpg: String,
    /// Index files by their path under `dists/<env>/`.
    pub files: HashMap<String, bytes::Bytes>,
    /// The path of each index file by the hex of its sha256.
    pub by_hash: HashMap<String, String>,
}

/// A package file of a suite, found for a caller who may read it.
#[derive(Debug, Clone)]
pub struct PoolFile {
    digest: Digest,
    pub size: u64,
}

impl PoolFile {
    pub fn digest(&self) -> Digest {
        self.digest
    }
}

/// The path of a package under the repository's root.
fn pool_path(env: &EnvName, build: &BuildId, name: &ArtifactName) -> String {
    format!("pool/{env}/{build}/{name}")
}

/// The server's repository signing key.
pub struct AptKey {
    secret: pgp::composed::SignedSecretKey,
    public_armored: String,
    public_binary: Vec<u8>,
}

impl std::fmt::Debug for AptKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AptKey").finish_non_exhaustive()
    }
}

fn key_error(e: impl std::fmt::Display) -> Error {
    Error::Internal(Cause::new(format!("APT signing key: {e}")))
}

impl AptKey {
    /// Reads the key at `path`, or creates it there (mode 0600) when there
    /// is none. Two servers creating it at once keep the one written first.
    fn load_or_create(path: Option<&Path>) -> Result<AptKey> {
        use pgp::composed::{Deserializable, SignedSecretKey};
        let Some(path) = path else {
            return AptKey::of(AptKey::generate()?);
        };
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let (secret, _) = SignedSecretKey::from_string(&text).map_err(key_error)?;
                return AptKey::of(secret);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(key_error(format!("{}: {e}", path.display()))),
        }
        let secret = AptKey::generate()?;
        let armored = secret
            .to_armored_string(pgp::composed::ArmorOptions::default())
            .map_err(key_error)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| key_error(format!("{}: {e}", dir.display())))?;
        }
        let tmp = dir.join(format!(".signing-key.{}.tmp", uuid::Uuid::now_v7()));
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| key_error(format!("{}: {e}", tmp.display())))?;
            f.write_all(armored.as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| key_error(format!("{}: {e}", tmp.display())))?;
        }
        // A link fails when the file exists: the key another server wrote
        // first wins, and this one is read back.
        let linked = std::fs::hard_link(&tmp, path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => AptKey::of(secret),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => AptKey::load_or_create(Some(path)),
            Err(e) => Err(key_error(format!("{}: {e}", path.display()))),
        }
    }

    /// An Ed25519 signing key (the v4 "legacy" EdDSA that gpgv 2.2 reads).
    fn generate() -> Result<pgp::composed::SignedSecretKey> {
        use pgp::composed::{KeyType, SecretKeyParamsBuilder};
        let mut params = SecretKeyParamsBuilder::default();
        params
            .key_type(KeyType::Ed25519Legacy)
            .can_certify(true)
            .can_sign(true)
            .primary_user_id("Tugboat APT repository signing key".into());
        let params = params.build().map_err(key_error)?;
        params.generate(rand::thread_rng()).map_err(key_error)
    }

    fn of(secret: pgp::composed::SignedSecretKey) -> Result<AptKey> {
        use pgp::ser::Serialize as _;
        let public = pgp::composed::SignedPublicKey::from(secret.clone());
        Ok(AptKey {
            public_armored: public
                .to_armored_string(pgp::composed::ArmorOptions::default())
                .map_err(key_error)?,
            public_binary: public.to_bytes().map_err(key_error)?,
            secret,
        })
    }

    /// The public key, armored (`key.asc`).
    pub fn public_armored(&self) -> &str {
        &self.public_armored
    }

    /// The public key as a binary keyring (`key.gpg`, what `signed-by=`
    /// reads).
    pub fn public_binary(&self) -> &[u8] {
        &self.public_binary
    }

    /// `text` clearsigned (`InRelease`).
    fn clearsign(&self, text: &str) -> Result<String> {
        let pw = pgp::types::Password::empty();
        pgp::composed::CleartextSignedMessage::sign(rand::thread_rng(), text, &self.secret.primary_key, &pw)
            .and_then(|m| m.to_armored_string(pgp::composed::ArmorOptions::default()))
            .map_err(key_error)
    }

    /// A detached, armored signature of `text` (`Release.gpg`).
    fn detached(&self, text: &str) -> Result<String> {
        let pw = pgp::types::Password::empty();
        pgp::composed::DetachedSignature::sign_binary_data(
            rand::thread_rng(),
            &self.secret.primary_key,
            &pw,
            pgp::crypto::hash::HashAlgorithm::Sha256,
            text.as_bytes(),
        )
        .and_then(|s| s.to_armored_string(pgp::composed::ArmorOptions::default()))
        .map_err(key_error)
    }
}

/// Why a registered `deb` artifact was refused.
fn not_a_deb(name: &ArtifactName, why: impl std::fmt::Display) -> Error {
    Error::NotDebianPackage {
        name: name.clone(),
        why: why.to_string(),
    }
}

/// The control file in a (decompressed) control archive.
fn control_file(tar_bytes: &[u8]) -> std::result::Result<String, String> {
    let mut archive = tar::Archive::new(tar_bytes);
    for entry in archive
        .entries()
        .map_err(|e| format!("its control.tar is not a tar archive: {e}"))?
    {
        let mut entry = entry.map_err(|e| format!("its control.tar is damaged: {e}"))?;
        let path = entry.path().map_err(|e| e.to_string())?.to_string_lossy().into_owned();
        if path == "./control" || path == "control" {
            if entry.size() > 1 << 20 {
                return Err("its control file is larger than 1 MiB".into());
            }
            let mut text = String::new();
            entry
                .read_to_string(&mut text)
                .map_err(|e| format!("its control file is not UTF-8 text: {e}"))?;
            return Ok(text);
        }
    }
    Err("its control.tar has no ./control".into())
}

/// Decompresses a control archive, at most [`deb::MAX_CONTROL_TAR`] × 4
/// bytes of it.
fn decompress(compression: Compression, bytes: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let limit = deb::MAX_CONTROL_TAR * 4;
    let mut out = Vec::new();
    let read = match compression {
        Compression::None => return Ok(bytes.to_vec()),
        Compression::Gzip => flate2::read::GzDecoder::new(bytes).take(limit).read_to_end(&mut out),
        Compression::Xz => liblzma::read::XzDecoder::new(bytes).take(limit).read_to_end(&mut out),
        Compression::Zstd => match ruzstd::decoding::StreamingDecoder::new(bytes) {
            Ok(d) => d.take(limit).read_to_end(&mut out),
            Err(e) => return Err(format!("its control.tar.zst is not zstd: {e}")),
        },
    };
    read.map_err(|e| format!("its control.tar could not be decompressed: {e}"))?;
    Ok(out)
}

fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(data)
        .and_then(|()| enc.finish())
        .map_err(|e| Error::Internal(Cause::new(format!("gzip: {e}"))))
}

fn xz(data: &[u8]) -> Result<Vec<u8>> {
    let mut enc = liblzma::write::XzEncoder::new(Vec::new(), 6);
    enc.write_all(data)
        .and_then(|()| enc.finish())
        .map_err(|e| Error::Internal(Cause::new(format!("xz: {e}"))))
}

/// Makes the indexes and Release file of a generation's packages.
fn make_indexes(
    key: &AptKey,
    g: &Generation,
    packages: &[(String, tug_db::DebArtifact, Paragraph)],
) -> Result<AptIndexes> {
    let entries: Vec<IndexEntry<'_>> = packages
        .iter()
        .map(|(hex, a, control)| IndexEntry {
            control,
            filename: "",
            size: a.size,
            sha256_hex: hex,
        })
        .collect();
    let paths: Vec<String> = packages
        .iter()
        .map(|(_, a, _)| pool_path(&g.environment, &a.build, &a.name))
        .collect();
    let entries: Vec<IndexEntry<'_>> = entries
        .into_iter()
        .zip(&paths)
        .map(|(e, p)| IndexEntry { filename: p, ..e })
        .collect();
    let architectures = deb::architectures(packages.iter().map(|(_, _, c)| c));
    let mut files = HashMap::new();
    let mut listed = Vec::new();
    for arch in &architectures {
        let plain = deb::packages_index(&entries, arch).into_bytes();
        let dir = format!("main/binary-{arch}");
        for (name, body) in [
            ("Packages", plain.clone()),
            ("Packages.gz", gzip(&plain)?),
            ("Packages.xz", xz(&plain)?),
        ] {
            let path = format!("{dir}/{name}");
            listed.push(IndexFile {
                path: path.clone(),
                size: body.len() as u64,
                sha256_hex: Digest::of(&body).hex(),
            });
            files.insert(path, bytes::Bytes::from(body));
        }
    }
    let release = deb::release_file(
        &ReleaseInfo {
            origin: "Tugboat",
            label: g.service.as_str(),
            suite: g.environment.as_str(),
            date: g.date,
            architectures: &architectures,
            description: &format!("{} {}", g.service, g.environment),
        },
        &listed,
    );
    Ok(AptIndexes {
        in_release: key.clearsign(&release)?,
        release_gpg: key.detached(&release)?,
        release,
        by_hash: listed.into_iter().map(|f| (f.sha256_hex, f.path)).collect(),
        files,
    })
}

impl Tugboat {
    /// Reads the control paragraph of every `deb` artifact in `specs` whose
    /// package was not read before, and stores them. A file that is not a
    /// Debian package is refused before anything is stored.
    pub(crate) async fn read_debs(&self, specs: &[ArtifactSpec]) -> Result<()> {
        let debs: Vec<&ArtifactSpec> = specs.iter().filter(|s| s.kind == ArtifactKind::Deb).collect();
        if debs.is_empty() {
            return Ok(());
        }
        let digests: Vec<Digest> = debs.iter().map(|s| s.digest).collect();
        let known: HashSet<Digest> = self.db.known_debs(&digests).await?.into_iter().collect();
        let mut rows = Vec::new();
        let mut seen = HashSet::new();
        for spec in debs {
            if known.contains(&spec.digest) || !seen.insert(spec.digest) {
                continue;
            }
            let control = self.read_control(spec).await?;
            rows.push(DebRow {
                digest: spec.digest,
                package: control.package().to_string(),
                version: control.version().to_string(),
                architecture: control.architecture().to_string(),
                control: control.text(),
            });
        }
        Ok(self.db.save_debs(&rows, self.now()).await?)
    }

    /// Reads a package's first bytes, as many as its control archive needs.
    async fn read_control(&self, spec: &ArtifactSpec) -> Result<Paragraph> {
        let blob = self.store.get(&spec.digest, 0, None).await?.ok_or(Error::BlobMissing {
            name: spec.name.clone(),
            digest: spec.digest,
        })?;
        let mut body = blob.body;
        let mut prefix: Vec<u8> = Vec::new();
        let (compression, start, end) = loop {
            match deb::control_member(&prefix).map_err(|e| not_a_deb(&spec.name, e))? {
                ControlMember::Found {
                    compression,
                    start,
                    end,
                } => break (compression, start, end),
                ControlMember::NeedBytes(n) => {
                    while prefix.len() < n {
                        match body.next().await {
                            Some(chunk) => prefix.extend_from_slice(&chunk.map_err(Error::internal)?),
                            None => return Err(not_a_deb(&spec.name, "it ends before its control archive does")),
                        }
                    }
                }
            }
        };
        drop(body);
        let name = spec.name.clone();
        tokio::task::spawn_blocking(move || {
            let tar = decompress(compression, &prefix[start..end]).map_err(|e| not_a_deb(&name, e))?;
            let text = control_file(&tar).map_err(|e| not_a_deb(&name, e))?;
            Paragraph::parse(&text).map_err(|e| not_a_deb(&name, e))
        })
        .await
        .map_err(|e| Error::Internal(Cause::new(e.to_string())))?
    }

    /// The server's repository signing key, read or created on first use.
    pub async fn apt_key(&self) -> Result<Arc<AptKey>> {
        let path = self.settings.apt.key_file.clone();
        self.apt_key
            .get_or_try_init(|| async move {
                tokio::task::spawn_blocking(move || AptKey::load_or_create(path.as_deref()).map(Arc::new))
                    .await
                    .map_err(|e| Error::Internal(Cause::new(e.to_string())))?
            })
            .await
            .cloned()
    }

    /// The suite `env` of `service` as `who` (`None`: a caller without a
    /// token) may see it now and at the `GENERATIONS - 1` deployments
    /// before, newest first. A suite whose build at that moment the caller
    /// may not see lists nothing, dated the epoch, so its answer says
    /// nothing of that build; older builds the caller may not see are left
    /// out.
    pub async fn apt_generations(
        &self,
        who: Option<&Principal>,
        service: &ServiceName,
        env: &EnvName,
    ) -> Result<Vec<Generation>> {
        match who {
            None => {
                self.public_environment(service, env).await?;
            }
            Some(who) => {
                self.require_follow(who, Action::Follow, service, env)?;
                self.environment_of(service, env).await?;
            }
        }
        let keep = self.settings.apt.keep.max(1);
        // Rollbacks repeat builds: read enough deployments to find `keep`
        // distinct ones behind each generation, in most histories.
        let limit = u32::try_from((GENERATIONS + keep) * 4).unwrap_or(u32::MAX);
        let history = self.db.history(service, env, limit).await?;
        let mut ids: Vec<BuildId> = history.iter().map(|d| d.build.clone()).collect();
        ids.sort();
        ids.dedup();
        let visible: HashSet<BuildId> = match who {
            None => {
                let mut out = HashSet::new();
                for id in &ids {
                    if let Some(b) = self.db.build_summary(id).await? {
                        if Tugboat::publicly_visible(&b) {
                            out.insert(b.id);
                        }
                    }
                }
                out
            }
            Some(who) => {
                let sights = self.sights(who, ids.clone()).await?;
                ids.into_iter().filter(|id| sights.full(id)).collect()
            }
        };
        let empty = |date| Generation {
            service: service.clone(),
            environment: env.clone(),
            date,
            builds: Vec::new(),
        };
        let mut out = Vec::new();
        for back in 0..GENERATIONS {
            let Some(now) = history.get(back) else {
                if back == 0 {
                    out.push(empty(DateTime::UNIX_EPOCH));
                }
                break;
            };
            if !visible.contains(&now.build) {
                out.push(empty(DateTime::UNIX_EPOCH));
                continue;
            }
            let mut builds: Vec<BuildId> = Vec::new();
            for d in &history[back..] {
                if builds.len() == keep {
                    break;
                }
                if visible.contains(&d.build) && !builds.contains(&d.build) {
                    builds.push(d.build.clone());
                }
            }
            out.push(Generation {
                date: now.deployed_at,
                builds,
                ..empty(now.deployed_at)
            });
        }
        Ok(out)
    }

    /// The signed indexes of a generation.
    pub async fn apt_indexes(&self, g: &Generation) -> Result<AptIndexes> {
        let key = self.apt_key().await?;
        let mut packages = Vec::new();
        for a in self.db.deb_artifacts(&g.builds).await? {
            match Paragraph::parse(&a.control) {
                Ok(p) => packages.push((a.digest.hex(), a, p)),
                Err(e) => tracing::warn!(digest = %a.digest, "stored control paragraph is not valid: {e}"),
            }
        }
        let g = g.clone();
        tokio::task::spawn_blocking(move || make_indexes(&key, &g, &packages))
            .await
            .map_err(|e| Error::Internal(Cause::new(e.to_string())))?
    }

    /// The package `name` of `build` if the caller's current view of the
    /// suite `env` lists it (see [`Tugboat::apt_generations`]).
    pub async fn apt_pool_file(
        &self,
        who: Option<&Principal>,
        service: &ServiceName,
        env: &EnvName,
        build: &BuildId,
        name: &ArtifactName,
    ) -> Result<PoolFile> {
        let generations = self.apt_generations(who, service, env).await?;
        let listed = generations.iter().any(|g| g.builds.contains(build));
        let found = match listed {
            true => self
                .db
                .artifacts(build)
                .await?
                .into_iter()
                .find(|a| &a.name == name && a.kind == ArtifactKind::Deb),
            false => None,
        };
        let spec = found.ok_or_else(|| Error::PackageNotFound(pool_path(env, build, name)))?;
        Ok(PoolFile {
            digest: spec.digest,
            size: spec.size,
        })
    }

    /// The bytes of a package found by [`Tugboat::apt_pool_file`].
    pub async fn apt_pool_read(&self, file: &PoolFile, start: u64, end: Option<u64>) -> Result<Blob> {
        self.read_counted(&file.digest, start, end)
            .await?
            .ok_or(Error::BlobNotFound(file.digest))
    }
}
