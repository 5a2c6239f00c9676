//! The OCI registry's use cases (Distribution Spec v1.1) over the same
//! store and database as everything else: who is asking (a Tugboat token,
//! a short-lived registry token signed with a key every server shares, or
//! nobody), what a tag or digest resolves to (a build's image, an
//! environment's, a free tag), and who may read it. Pull and push live in
//! their own modules; HTTP is the server's business.
//!
//! Every read goes through [`Tugboat::oci_may_read`]: the one rule for
//! registry callers, built on the service's sight of builds (embargo,
//! scope) and on [`Tugboat::public_environment`] for callers without a
//! token.

use std::time::Duration;

use base64::Engine as _;
use hmac::Mac as _;
use tug_core::oci::{OciCode, OciError, Reference, RepoAction, Repository, Tag};

use super::*;

mod pull;
mod push;

pub use pull::{ManifestAnswer, TagPage};
pub use push::{ChunkOutcome, PushedManifest};

/// How long a registry bearer token is valid.
pub const REGISTRY_TOKEN_TTL: Duration = Duration::from_secs(300);

/// The name of the registry's signing key in the database.
const KEY_NAME: &str = "registry-token-hmac";

/// Who is asking the registry.
#[derive(Debug, Clone)]
pub enum Visitor {
    /// A caller without a token: it may pull what public environments run.
    Anonymous,
    /// A Tugboat token, presented directly (all its role allows) or through
    /// a registry token (only the repositories and actions granted).
    Token {
        who: Principal,
        granted: Option<Vec<(String, Vec<RepoAction>)>>,
    },
}

/// The credentials a request carried.
#[derive(Debug, Clone)]
pub enum Credentials {
    None,
    /// `Authorization: Basic` (the password is a Tugboat token).
    Basic(String),
    /// `Authorization: Bearer` (a registry token or a Tugboat token).
    Bearer(String),
}

/// A registry bearer token as the token endpoint answers it.
#[derive(Debug, Clone)]
pub struct RegistryToken {
    pub token: String,
    pub expires_in: u64,
    pub issued_at: DateTime<Utc>,
}

/// What a registry token says, signed.
#[derive(serde::Serialize, serde::Deserialize)]
struct Claims {
    /// The Tugboat token's id; `None` for an anonymous caller.
    tok: Option<String>,
    /// Expiry, seconds since the epoch.
    exp: i64,
    acc: Vec<(String, Vec<RepoAction>)>,
}

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

fn oci(code: OciCode, message: impl Into<String>) -> Error {
    Error::Oci(OciError::new(code, message))
}

/// The answer to a caller who is not allowed: a caller without a token is
/// told to authenticate, one with a token that it is denied.
fn refused(v: &Visitor, what: &str) -> Error {
    match v {
        Visitor::Anonymous => oci(
            OciCode::Unauthorized,
            format!("{what} needs a token: log in with any user name and a Tugboat token as the password"),
        ),
        Visitor::Token { .. } => oci(OciCode::Denied, format!("this token may not {what}")),
    }
}

impl Tugboat {
    /// The registry's signing key: created by the first server that needs
    /// it, kept in the database so every server signs and checks alike.
    async fn registry_key(&self) -> Result<&[u8]> {
        let key = self
            .registry_key
            .get_or_try_init(|| async {
                let fresh: [u8; 32] = rand::random();
                let secret = self.db.oci_key(KEY_NAME, &hex::encode(fresh), self.now()).await?;
                hex::decode(secret).map_err(Error::corrupt)
            })
            .await?;
        Ok(key)
    }

    fn mac(key: &[u8], payload: &[u8]) -> Result<Vec<u8>> {
        let mut mac = HmacSha256::new_from_slice(key).map_err(Error::internal)?;
        mac.update(payload);
        Ok(mac.finalize().into_bytes().to_vec())
    }

    /// Exchanges credentials for a registry token granting, on each
    /// repository of the `scopes` asked (`repository:<name>:<actions>`),
    /// what the token's role and scope allow there. Without credentials the token is anonymous
    /// (pulls of public environments only).
    pub async fn registry_token(&self, credentials: &Credentials, scopes: &[String]) -> Result<RegistryToken> {
        let who = match credentials {
            Credentials::None => None,
            Credentials::Basic(secret) | Credentials::Bearer(secret) => Some(self.authenticate(secret).await?),
        };
        let mut acc = Vec::new();
        for s in scopes.iter().flat_map(|s| s.split(' ')).filter(|s| !s.is_empty()) {
            let Some((repo, _asked)) = tug_core::oci::parse_scope(s).map_err(Error::Oci)? else {
                continue;
            };
            // Every action the role allows on the repository, not only those
            // asked: clients keep one token per repository and push with the
            // token a pull obtained (oras-py does).
            let allowed: Vec<RepoAction> = [RepoAction::Pull, RepoAction::Push, RepoAction::Delete]
                .into_iter()
                .filter(|a| match &who {
                    None => *a == RepoAction::Pull,
                    Some(who) => self.require_in(who, action_of(*a), repo.service()).is_ok(),
                })
                .collect();
            acc.push((repo.as_str().to_string(), allowed));
        }
        let issued_at = self.now();
        let ttl = REGISTRY_TOKEN_TTL.as_secs();
        let claims = Claims {
            tok: who.map(|w| w.token_id),
            exp: issued_at
                .timestamp()
                .saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX)),
            acc,
        };
        let payload = serde_json::to_vec(&claims).map_err(Error::internal)?;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let sig = Self::mac(self.registry_key().await?, &payload)?;
        Ok(RegistryToken {
            token: format!("{}.{}", b64.encode(&payload), b64.encode(sig)),
            expires_in: ttl,
            issued_at,
        })
    }

    /// Who a registry request comes from. A request without credentials is
    /// refused (the client then asks the token endpoint, anonymously if it
    /// has nothing else).
    pub async fn registry_visitor(&self, credentials: &Credentials) -> Result<Visitor> {
        match credentials {
            Credentials::None => Err(oci(OciCode::Unauthorized, "authentication required")),
            Credentials::Basic(secret) => Ok(Visitor::Token {
                who: self.authenticate(secret).await?,
                granted: None,
            }),
            Credentials::Bearer(secret) if secret.starts_with(TOKEN_PREFIX) => Ok(Visitor::Token {
                who: self.authenticate(secret).await?,
                granted: None,
            }),
            Credentials::Bearer(token) => {
                let invalid = || {
                    oci(
                        OciCode::Unauthorized,
                        "the registry token is not valid; ask /v2/token for another",
                    )
                };
                let (payload, sig) = token.split_once('.').ok_or_else(invalid)?;
                let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
                let payload = b64.decode(payload).map_err(|_| invalid())?;
                let sig = b64.decode(sig).map_err(|_| invalid())?;
                let mut mac = HmacSha256::new_from_slice(self.registry_key().await?).map_err(Error::internal)?;
                mac.update(&payload);
                mac.verify_slice(&sig).map_err(|_| invalid())?;
                let claims: Claims = serde_json::from_slice(&payload).map_err(|_| invalid())?;
                if claims.exp < self.now().timestamp() {
                    return Err(oci(
                        OciCode::Unauthorized,
                        "the registry token expired; ask /v2/token for another",
                    ));
                }
                let Some(id) = claims.tok else {
                    return Ok(Visitor::Anonymous);
                };
                let row = self.db.token_by_id(&id).await?.ok_or(Error::InvalidToken)?;
                if row.revoked_at.is_some() {
                    return Err(Error::TokenRevoked(row.name));
                }
                Ok(Visitor::Token {
                    who: Principal {
                        token_id: row.id,
                        name: row.name,
                        role: row.role,
                        service: row.service,
                        environment: row.environment,
                    },
                    granted: Some(claims.acc),
                })
            }
        }
    }

    /// Whether the visitor may do `action` on the repository at all (its
    /// role, its scope, what its registry token grants); what it may then
    /// see is decided per object.
    pub fn oci_allow(&self, v: &Visitor, repo: &Repository, action: RepoAction) -> Result<()> {
        match v {
            Visitor::Anonymous if action == RepoAction::Pull => Ok(()),
            Visitor::Anonymous => Err(refused(v, &format!("{} {repo}", action.as_str()))),
            Visitor::Token { who, granted } => {
                if let Some(granted) = granted {
                    let ok = granted
                        .iter()
                        .any(|(r, actions)| r == repo.as_str() && actions.contains(&action));
                    if !ok {
                        return Err(oci(
                            OciCode::Unauthorized,
                            format!("the registry token does not grant {} on {repo}", action.as_str()),
                        ));
                    }
                }
                self.require_in(who, action_of(action), repo.service())
                    .map_err(|e| oci(OciCode::Denied, e.to_string()))
            }
        }
    }

    /// The one rule for reading `digest` (a manifest or a blob) from a
    /// repository. A caller without a token reads only the images public
    /// environments run (and what they refer to), never an embargoed
    /// build's. A token holder reads what its repository holds unless it
    /// belongs only to builds it may not see; one that may push also reads
    /// blobs it uploaded before any manifest refers to them.
    pub(crate) async fn oci_may_read(&self, v: &Visitor, repo: &Repository, digest: &Digest) -> Result<bool> {
        let who = match v {
            Visitor::Anonymous => return self.oci_public_holds(repo, digest).await,
            Visitor::Token { who, .. } => who,
        };
        if !self.db.oci_repository_has(repo.as_str(), digest).await? {
            // Not (yet) in this repository: a blob being pushed, readable
            // under the rule of `/v1/blobs` (a build the caller may see
            // needs it, or none does and the caller may upload), so that a
            // digest alone opens nothing of another service or embargo.
            return Ok(self.may_read_blob(who, digest).await? && self.store.stat(digest).await?.is_some());
        }
        if who.reader().sees_everything() {
            return Ok(true);
        }
        let builds = self.db.blob_builds(digest).await?;
        let mine: Vec<_> = builds.into_iter().filter(|b| b.service == *repo.service()).collect();
        if mine.is_empty() {
            return Ok(true);
        }
        for b in &mine {
            if self.sight(who, b).await?.is_full() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether `digest` is the image (or part of the image) a public
    /// environment of the repository's service runs now, of a build a
    /// caller without a token may see.
    async fn oci_public_holds(&self, repo: &Repository, digest: &Digest) -> Result<bool> {
        for env in self.public_environments(repo.service()).await? {
            for (_, image) in self
                .db
                .oci_environment_images(repo.service(), repo.image(), Some(&env.name))
                .await?
            {
                if !public_image(&image) {
                    continue;
                }
                if image.digest == *digest || self.db.oci_manifest_refs(&image.digest).await?.contains(digest) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// What a tag names, for this visitor: the digest, or
    /// `MANIFEST_UNKNOWN` (also for what the visitor may not see).
    pub(crate) async fn oci_resolve(&self, v: &Visitor, repo: &Repository, reference: &Reference) -> Result<Digest> {
        let unknown = || oci(OciCode::ManifestUnknown, format!("{repo} has no manifest {reference}"));
        let tag = match reference {
            Reference::Digest(d) => {
                return if self.oci_may_read(v, repo, d).await?
                    && self.db.oci_manifest(repo.as_str(), d).await?.is_some()
                {
                    Ok(*d)
                } else {
                    Err(unknown())
                };
            }
            Reference::Tag(t) => t,
        };
        // An environment's tag: the image of the build it runs now.
        if let Ok(env) = EnvName::parse(tag.as_str()) {
            let found = self
                .db
                .oci_environment_images(repo.service(), repo.image(), Some(&env))
                .await?
                .into_iter()
                .next();
            if let Some((_, image)) = found {
                let visible = match v {
                    Visitor::Anonymous => {
                        self.public_environment(repo.service(), &env).await.is_ok() && public_image(&image)
                    }
                    Visitor::Token { who, .. } => self.sight(who, &image.build).await?.is_full(),
                };
                return if visible { Ok(image.digest) } else { Err(unknown()) };
            }
        }
        if let Visitor::Anonymous = v {
            return Err(unknown());
        }
        let Visitor::Token { who, .. } = v else {
            return Err(unknown());
        };
        // A build's tag, or a sealed build's version.
        let images = match tag.build() {
            Some(id) => self.db.oci_build_image(&id, repo.image()).await?.into_iter().collect(),
            None => self
                .db
                .oci_build_images(repo.service(), repo.image())
                .await?
                .into_iter()
                .filter(|i| i.state == BuildState::Sealed && i.version.to_string() == tag.as_str())
                .collect::<Vec<_>>(),
        };
        for image in images.iter().filter(|i| i.build.service == *repo.service()) {
            if self.sight(who, &image.build).await?.is_full() {
                return Ok(image.digest);
            }
        }
        if tag.build().is_none() && images.is_empty() {
            if let Some(d) = self.db.oci_tag(repo.as_str(), tag.as_str()).await? {
                if self.oci_may_read(v, repo, &d).await? {
                    return Ok(d);
                }
            }
        }
        Err(unknown())
    }

    /// The service must exist for its repositories to.
    pub(crate) async fn oci_service_exists(&self, repo: &Repository) -> Result<()> {
        if self.db.service_exists(repo.service()).await? {
            Ok(())
        } else {
            Err(oci(
                OciCode::NameUnknown,
                format!(
                    "service {} does not exist; create it with tug service create",
                    repo.service()
                ),
            ))
        }
    }
}

/// Whether a caller without a token may see the build of an image.
fn public_image(image: &tug_db::BuildImage) -> bool {
    Tugboat::publicly_visible_facts(&image.build)
}

/// The role action a registry action needs.
fn action_of(a: RepoAction) -> Action {
    match a {
        RepoAction::Pull => Action::Read,
        RepoAction::Push | RepoAction::Delete => Action::WriteBuilds,
    }
}

/// The tag a reference names, if it is one.
pub(crate) fn tag_of(reference: &Reference) -> Option<&Tag> {
    match reference {
        Reference::Tag(t) => Some(t),
        Reference::Digest(_) => None,
    }
}
