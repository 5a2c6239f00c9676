//! Authentication and tokens: who a request's token is, creating, listing and
//! revoking tokens, and the first admin token of a new installation.

use super::*;

impl Tugboat {
    /// Finds the token a request presented. Unknown and revoked tokens are
    /// refused; the lookup goes to the database every time, so a revocation
    /// takes effect at once on every server.
    pub async fn authenticate(&self, secret: &str) -> Result<Principal> {
        let Some(row) = self.db.token_by_hash(&hash_secret(secret)).await? else {
            return Err(Error::InvalidToken);
        };
        if row.revoked_at.is_some() {
            return Err(Error::TokenRevoked(row.name));
        }
        Ok(Principal {
            token_id: row.id,
            name: row.name,
            role: row.role,
            service: row.service,
            environment: row.environment,
        })
    }

    pub(crate) fn require(&self, who: &Principal, action: Action) -> Result<()> {
        if who.role.allows(action) {
            Ok(())
        } else {
            Err(Error::Forbidden { role: who.role, action })
        }
    }

    /// Creates the first admin token if the database has none (a new
    /// installation). Returns its secret when one was made.
    pub async fn bootstrap_admin(&self) -> Result<Option<String>> {
        if self.db.count_active_admin_tokens().await? > 0 {
            return Ok(None);
        }
        let name = TokenName::parse("admin").map_err(|e| Error::Invalid(e.to_string()))?;
        match self.insert_token(name, Role::Admin, Scope::default(), None).await {
            Ok(created) => Ok(Some(created.secret)),
            // Another server sharing the database won the race.
            Err(Error::TokenNameTaken(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates a token; `created_by` is `None` for the first admin token,
    /// which the server makes by itself.
    pub(crate) async fn insert_token(
        &self,
        name: TokenName,
        role: Role,
        scope: Scope,
        created_by: Option<&Principal>,
    ) -> Result<CreatedToken> {
        tug_core::access::check_scope(role, scope.service.as_ref(), scope.environment.as_ref())
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let mut raw = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut raw);
        let secret = format!("{TOKEN_PREFIX}{}", hex::encode(raw));
        let token = NewToken {
            id: uuid::Uuid::now_v7().to_string(),
            name,
            role,
            service: scope.service,
            environment: scope.environment,
            secret_hash: hash_secret(&secret),
            created_at: self.now(),
            created_by: created_by.as_ref().map(|who| who.name.to_string()),
        };
        let mut tx = self.db.begin().await?;
        tx.insert_token(&token).await?;
        let row = TokenRecord {
            id: token.id,
            name: token.name,
            role: token.role,
            service: token.service,
            environment: token.environment,
            created_at: token.created_at,
            created_by: token.created_by,
            revoked_at: None,
        };
        let event = self.event(
            row.service.as_ref(),
            created_by.map(events::actor),
            Change::TokenCreated {
                token: events::event_token(&row),
            },
        );
        self.commit(tx, &[event]).await?;
        Ok(CreatedToken { token: row, secret })
    }

    pub async fn create_token(
        &self,
        who: &Principal,
        name: TokenName,
        role: Role,
        scope: Scope,
    ) -> Result<CreatedToken> {
        self.require(who, Action::ManageTokens)?;
        if let (Some(service), Some(env)) = (&scope.service, &scope.environment) {
            // The environment must exist now; a later pipeline may drop
            // it, and the token then follows nothing.
            self.environment_of(service, env).await?;
        }
        self.insert_token(name, role, scope, Some(who)).await
    }

    pub async fn list_tokens(&self, who: &Principal) -> Result<Vec<TokenRecord>> {
        self.require(who, Action::ManageTokens)?;
        Ok(self.db.list_tokens().await?)
    }

    /// Revokes a token by id, or the active token of a name (names are
    /// unique among active tokens; a revoked name may be reused, and the
    /// name then means the new token). The last active admin token cannot
    /// be revoked: nobody could create another. That check and the
    /// revocation are one atomic step in the database, so two admins
    /// revoking each other at once leave one of them.
    pub async fn revoke_token(&self, who: &Principal, name_or_id: &str) -> Result<TokenRecord> {
        self.require(who, Action::ManageTokens)?;
        let shown = || name_or_id.chars().take(80).collect::<String>();
        let tokens = self.db.list_tokens().await?;
        let target = match find_token(&tokens, name_or_id) {
            Ok(t) => t,
            Err(Error::TokenNotFound(_)) => {
                // Not active under that name or id: say so when it was.
                let revoked = tokens
                    .iter()
                    .rev()
                    .find(|t| t.revoked_at.is_some() && (t.id == name_or_id || t.name.as_str() == name_or_id));
                return Err(match revoked {
                    Some(t) => Error::TokenAlreadyRevoked {
                        name: t.name.clone(),
                        at: t.revoked_at.map(rfc3339).unwrap_or_default(),
                    },
                    None => Error::TokenNotFound(shown()),
                });
            }
            Err(e) => return Err(e),
        };
        let mut tx = self.db.begin().await?;
        match tx.revoke_token(&target.id, self.now()).await? {
            Revocation::Revoked(t) => {
                let event = self.event(
                    t.service.as_ref(),
                    Some(events::actor(who)),
                    Change::TokenRevoked {
                        token: events::event_token(&t),
                    },
                );
                // Requests of the token that are still open learn of it
                // from this server's change watcher at once (which the
                // commit wakes).
                self.commit(tx, &[event]).await?;
                Ok(t)
            }
            Revocation::AlreadyRevoked(t) => Err(Error::TokenAlreadyRevoked {
                name: t.name,
                at: t.revoked_at.map(rfc3339).unwrap_or_default(),
            }),
            Revocation::LastAdmin => Err(Error::LastAdmin),
            Revocation::NotFound => Err(Error::TokenNotFound(shown())),
        }
    }
}
