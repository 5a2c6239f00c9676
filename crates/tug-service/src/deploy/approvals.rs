//! Approvals: the requests of deployments that need approvers, approving and
//! rejecting them, and carrying out a request once it has what it needs.

use super::*;

impl Tugboat {
    /// Approves the pending deployment of `build` into `env`. The requester
    /// never approves their own deployment; each approver decides once; the
    /// last approval needed carries the deployment out (the policies are
    /// checked again then). Of several approvals that complete a request at
    /// the same moment exactly one deploys; the others are recorded and
    /// answered with the request as deployed.
    pub async fn approve(
        &self,
        who: &Principal,
        service: &ServiceName,
        env: &EnvName,
        build: &BuildRef,
    ) -> Result<Decision> {
        let (environment, request, build) = self
            .record_decision(who, service, env, build, states::Decision::Approve)
            .await?;
        self.carry_out_request(who, &environment, build, &request.id, environment.approvals)
            .await
    }

    /// Rejects the pending deployment of `build` into `env`, which ends the
    /// request (unless a concurrent approval carried it out first).
    pub async fn reject(
        &self,
        who: &Principal,
        service: &ServiceName,
        env: &EnvName,
        build: &BuildRef,
    ) -> Result<Decision> {
        let (environment, request, _) = self
            .record_decision(who, service, env, build, states::Decision::Reject)
            .await?;
        let need = environment.approvals;
        // Whatever it came to (rejected now, or deployed by an approval
        // that got there first).
        let request = self.db.request(&request.id).await?.unwrap_or(request);
        Ok(Decision {
            request,
            need,
            deployment: None,
        })
    }

    /// Records one approver's decision on the pending request for `build`
    /// in `env` with its event, in one transaction; a rejection closes the
    /// request in the same transaction.
    pub(crate) async fn record_decision(
        &self,
        who: &Principal,
        service: &ServiceName,
        env: &EnvName,
        build: &BuildRef,
        decision: states::Decision,
    ) -> Result<(Environment, DeploymentRequest, BuildRecord)> {
        self.require_in(who, Action::Approve, service)?;
        let environment = self.environment_of(service, env).await?;
        let build = self.resolve_visible(who, build).await?;
        let now = self.now();
        let Some(request) = self.db.pending_request(service, env, &build.id, now).await? else {
            return Err(self.nothing_waits(service, env, &build.id, now).await);
        };
        if request.requested_by == who.name.as_str() {
            return Err(Error::SelfApproval {
                token: who.name.clone(),
            });
        }
        let mut tx = self.db.begin().await?;
        tx.decide(&request.id, who.name.as_str(), decision, now).await?;
        let approval = crate::events::approval(&request, &build);
        let change = match decision {
            states::Decision::Approve => Change::ApprovalApproved(approval),
            states::Decision::Reject => {
                tx.close_request(&request.id, RequestState::Rejected).await?;
                Change::ApprovalRejected(approval)
            }
        };
        let event = self.event(Some(service), Some(crate::events::actor(who)), change);
        self.commit(tx, &[event]).await?;
        if let Ok(waited) = (now - request.requested_at).to_std() {
            self.metrics
                .decided(service.as_str(), env.as_str(), decision.as_str(), waited);
        }
        Ok((environment, request, build))
    }

    /// Why no request for `build` into `env` waits for approval: it expired
    /// (say so, and expire it if no sweep has yet), or there is none.
    pub(crate) async fn nothing_waits(
        &self,
        service: &ServiceName,
        env: &EnvName,
        build: &BuildId,
        now: DateTime<Utc>,
    ) -> Error {
        let last = match self.db.last_request(service, env, build, None).await {
            Ok(last) => last,
            Err(e) => return e.into(),
        };
        match last {
            Some(r) if r.state == RequestState::Expired || (r.state == RequestState::Pending && r.is_due(now)) => {
                if let Err(e) = self.expire_due_requests().await {
                    tracing::warn!(error = %e, "cannot expire due requests");
                }
                Error::NothingToDeploy(format!(
                    "the request to deploy build {build} into {env} expired{}; ask for the deployment again",
                    r.expires_at
                        .map(|t| format!(" at {}", crate::rfc3339(t)))
                        .unwrap_or_default()
                ))
            }
            _ => Error::NothingToDeploy(format!(
                "no deployment of build {build} into {env} of {service} waits for approval"
            )),
        }
    }

    /// Carries out an approved request if it has the approvals it needs.
    /// Another deployment into the environment landing first is not the
    /// approver's problem: it is tried again. The request being closed
    /// meanwhile (deployed by a concurrent approval, rejected, expired) is
    /// answered with the request as it stands.
    pub(crate) async fn carry_out_request(
        &self,
        who: &Principal,
        environment: &Environment,
        build: BuildRecord,
        request_id: &str,
        need: u32,
    ) -> Result<Decision> {
        let mut attempt = 0;
        loop {
            let request = self
                .db
                .request(request_id)
                .await?
                .ok_or_else(|| Error::NothingToDeploy(format!("deployment request {request_id} is gone")))?;
            let now = self.now();
            match request.state {
                RequestState::Pending if !request.is_due(now) => {}
                RequestState::Deployed => {
                    return Ok(Decision {
                        request,
                        need,
                        deployment: None,
                    })
                }
                _ => {
                    return Err(self
                        .nothing_waits(&request.service, &environment.name, &build.id, now)
                        .await)
                }
            }
            let approvals = approvals(&request);
            if approvals < need {
                return Ok(Decision {
                    request,
                    need,
                    deployment: None,
                });
            }
            let intent = Intent {
                service: &request.service,
                environment,
                build: build.clone(),
                kind: request.kind,
                options: DeployOptions {
                    override_freeze: request.override_freeze,
                    reason: request.reason.clone(),
                },
                requested_by: Some(request.requested_by.clone()),
                // The approval that completes the request carries it out.
                actor: Some(crate::events::actor(who)),
                // The override was checked when the request was made.
                admin: request.override_freeze,
                approvals,
                request: Some(request.id.clone()),
                state: None,
            };
            match self.carry_out(intent).await {
                Ok(Outcome::Deployed { deployment, build }) => {
                    let request = DeploymentRequest {
                        state: RequestState::Deployed,
                        ..request
                    };
                    return Ok(Decision {
                        request,
                        need,
                        deployment: Some((deployment, build)),
                    });
                }
                Ok(Outcome::Pending { request, need }) => {
                    return Ok(Decision {
                        request,
                        need,
                        deployment: None,
                    })
                }
                Err(Error::RequestClosed(_)) => {}
                Err(Error::Conflict(_)) if attempt < CONFLICT_ATTEMPTS => {
                    attempt += 1;
                    crate::reconcile::jitter(attempt).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Finds the pending request to deploy `build` into the environment (of
    /// the build's service), or makes it: never a second one, however many
    /// ask at once.
    pub(crate) async fn request_approvals(
        &self,
        environment: &Environment,
        build: &BuildRecord,
        kind: DeployKind,
        options: DeployOptions,
        requested_by: Option<String>,
        actor: Option<tug_api::Actor>,
    ) -> Result<DeploymentRequest> {
        let service = &build.service;
        let timeout = environment.approval_timeout.unwrap_or(self.settings.approval_timeout);
        for _ in 0..CONFLICT_ATTEMPTS {
            let now = self.now();
            if let Some(request) = self
                .db
                .pending_request(service, &environment.name, &build.id, now)
                .await?
            {
                return Ok(request);
            }
            let request = DeploymentRequest {
                id: uuid::Uuid::now_v7().to_string(),
                service: service.clone(),
                environment: environment.name.clone(),
                build: build.id.clone(),
                kind,
                state: RequestState::Pending,
                requested_by: requested_by.clone().unwrap_or_else(|| "auto-release".into()),
                requested_at: now,
                expires_at: Some(expiry(now, timeout, &environment.name)?),
                reason: options.reason.clone(),
                override_freeze: options.override_freeze,
                decisions: Vec::new(),
            };
            let supersede = kind == DeployKind::AutoRelease;
            let mut tx = self.db.begin().await?;
            match tx.create_request(&request, supersede).await? {
                CreatedRequest::Created { superseded } => {
                    let mut events = vec![self.event(
                        Some(service),
                        actor.clone(),
                        Change::ApprovalRequested(crate::events::approval(&request, build)),
                    )];
                    for old in &superseded {
                        let old_build = self.db.build_summary(&old.build).await?;
                        if let Some(b) = old_build {
                            events.push(self.event(
                                Some(service),
                                None,
                                Change::ApprovalSuperseded(crate::events::approval(old, &b)),
                            ));
                        }
                    }
                    self.commit(tx, &events).await?;
                    self.requests.notify_one();
                    return Ok(request);
                }
                // Made by someone else at the same moment (read it next
                // round), or one past its expiry that no sweep has marked
                // yet keeps the place (mark it, then make ours).
                CreatedRequest::AlreadyPending => {
                    drop(tx);
                    self.expire_due_requests().await?;
                }
            }
        }
        Err(Error::Conflict(format!(
            "could not record the request to deploy build {} into {}; try again",
            build.id, environment.name
        )))
    }
}
