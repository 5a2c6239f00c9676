//! Durable consumers of the event log: something outside Tugboat (a file,
//! a webhook, a chat channel, a Git repository) that must see every event,
//! in order, at least once, whatever crashes and restarts happen.
//!
//! A [`Consumer`] has a name; its cursor (the id of the last event it
//! handled) and its lease live in the database under that name
//! (`tug_db::consumers`). The dispatcher ([`Tugboat::run_consumer`]) runs
//! beside the server's requests, never on their path: it wakes when this
//! server records events and polls otherwise (events recorded by other
//! servers on the same database), feeds the consumer the events after its
//! cursor in pages, and moves the cursor only after the consumer said they
//! are handled durably. A crash between the two offers the same events
//! again after the restart: delivery is at least once, and a consumer that
//! can tell what it already wrote (the event sink can) makes it exactly
//! once.
//!
//! One writer per consumer: with several servers on one database, a server
//! runs a consumer only while it holds the consumer's lease. The holder
//! renews it every third of its length and hands events to the consumer
//! only while two thirds of it remain ahead by its own monotonic clock
//! (measured from before the renewal was sent), so it stops writing a third
//! of a lease before anyone else may take over; moving the cursor checks
//! the lease is still its own (the fence), so a holder that stalled past
//! its expiry stops at its next step without moving the cursor. Another
//! server takes an expired lease over at its next poll. Expiry is compared
//! by the servers' wall clocks, so they must agree to well within a third
//! of the lease.

use std::time::Duration;

use tokio::time::Instant;
use tug_api::AuditRecord;
use tug_db::ConsumerLease;

use crate::audit::audit_record;
use crate::{Result, Tugboat};

/// Events fed to a consumer at once at most.
const PAGE: u32 = 1000;

/// How long a consumer whose handling failed waits before it is offered
/// the same events again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Why a consumer could not handle events, how far it got, and when to
/// offer it the rest again.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ConsumerError {
    pub message: String,
    /// The id of the last event handled durably before the failure: the
    /// cursor moves there, and the events after it are offered again.
    pub handled: Option<i64>,
    /// How long to wait before offering the events again (a consumer
    /// backing off from a failing endpoint); `None`: about a second.
    pub retry_after: Option<Duration>,
}

impl ConsumerError {
    pub fn new(message: impl Into<String>) -> ConsumerError {
        ConsumerError {
            message: message.into(),
            handled: None,
            retry_after: None,
        }
    }

    /// The events up to and including `id` were handled durably.
    pub fn handled_through(mut self, id: i64) -> ConsumerError {
        self.handled = Some(id);
        self
    }

    /// Offer the events again after `after`.
    pub fn retry_after(mut self, after: Duration) -> ConsumerError {
        self.retry_after = Some(after);
        self
    }
}

impl From<std::io::Error> for ConsumerError {
    fn from(e: std::io::Error) -> Self {
        ConsumerError::new(e.to_string())
    }
}

/// Something fed every event of the log, in order, at least once.
#[async_trait::async_trait]
pub trait Consumer: Send + 'static {
    /// Where its cursor and lease are stored: stable across restarts.
    fn name(&self) -> &str;

    /// `true` for a consumer that something configured owns (a webhook):
    /// its owner creates its row (`Tx::create_consumer`) and deletes it,
    /// and the consumer ends when the row is gone instead of starting over
    /// from the log's first event. `false` (the event sink): the row is
    /// created on first use.
    fn owned(&self) -> bool {
        false
    }

    /// Called when this server starts running the consumer (it took the
    /// lease, or a handling failed), before events are handed to it: the
    /// moment to open connections and repair what a crash left.
    async fn resume(&mut self) -> Result<(), ConsumerError> {
        Ok(())
    }

    /// Handles `records`, the events after the cursor in id order (some
    /// possibly handled before, when a crash came between their handling
    /// and the cursor's move), and returns once they are handled durably.
    /// An error has them offered again.
    async fn handle(&mut self, records: &[AuditRecord]) -> Result<(), ConsumerError>;
}

/// How a server holds consumers' leases.
#[derive(Debug, Clone)]
pub struct LeaseOptions {
    /// How long a lease runs unless renewed: how long a dead server's
    /// consumers wait before another server takes them over.
    pub lease: Duration,
    /// This server's name as a holder: unique to the process.
    pub holder: String,
}

impl LeaseOptions {
    /// Options with a holder name unique to this process, starting with
    /// `host` when given (the server passes its host name, so an operator
    /// reading the lease row knows which machine holds it).
    pub fn new(lease: Duration, host: Option<&str>) -> LeaseOptions {
        let mut bytes = [0u8; 6];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut bytes);
        let process = format!("{}:{}", std::process::id(), hex::encode(bytes));
        let holder = match host {
            Some(host) if !host.is_empty() => format!("{host}:{process}"),
            _ => process,
        };
        LeaseOptions { lease, holder }
    }
}

/// Why a server stopped running a consumer.
enum Stopped {
    /// Another server took the lease over (or its owner deleted it).
    Lost,
    /// The server is stopping.
    Stopping,
}

/// A set of consumers that changes while the server runs (one per webhook,
/// one per GitOps repository): [`Tugboat::run_consumer_family`] runs one
/// task per name it lists, starts the new ones and stops those gone.
#[async_trait::async_trait]
pub trait ConsumerFamily: Send + Sync + 'static {
    /// What the family is, for the log.
    fn family(&self) -> &str;

    /// The names of the consumers that should run now.
    async fn names(&self, tugboat: &Tugboat) -> Result<Vec<String>>;

    /// The consumer named `name` (one of those [`Self::names`] listed).
    fn make(&self, tugboat: &Tugboat, name: &str) -> Box<dyn Consumer>;
}

/// How often a family's names are read again when nothing announced a
/// change (changes made through another server).
const FAMILY_RESCAN: Duration = Duration::from_secs(2);

impl Tugboat {
    /// Runs `consumer` until `stop` turns true: takes its lease when free
    /// or expired and feeds it events while the lease is held; gives the
    /// lease up when stopping, so another server takes over at once.
    pub async fn run_consumer(
        self,
        mut consumer: Box<dyn Consumer>,
        options: LeaseOptions,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let name = consumer.name().to_string();
        // Poll for a free lease a few times per lease, at most every 100 ms.
        let poll = (options.lease / 4).max(Duration::from_millis(100));
        while !*stop.borrow() {
            let taken_at = Instant::now();
            let now = self.now();
            match self
                .db
                .take_consumer_lease(&name, &options.holder, now, now + options.lease, !consumer.owned())
                .await
            {
                Ok(Some(lease)) => {
                    tracing::info!(consumer = %name, holder = %options.holder, cursor = lease.cursor, "running consumer");
                    match self.hold(&mut *consumer, lease, taken_at, &options, &mut stop).await {
                        Ok(Stopped::Stopping) => return,
                        Ok(Stopped::Lost) => {
                            tracing::warn!(consumer = %name, "another server took this consumer over; stopped")
                        }
                        Err(e) => tracing::warn!(consumer = %name, error = %e, "consumer stopped; retrying"),
                    }
                }
                Ok(None) => {
                    if consumer.owned() && matches!(self.db.consumer_exists(&name).await, Ok(false)) {
                        tracing::info!(consumer = %name, "the consumer was deleted; stopped");
                        return;
                    }
                }
                Err(e) => tracing::warn!(consumer = %name, error = %e, "cannot take the consumer's lease"),
            }
            tokio::select! {
                () = tokio::time::sleep(poll) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Feeds `consumer` while `lease` is held.
    async fn hold(
        &self,
        consumer: &mut dyn Consumer,
        mut lease: ConsumerLease,
        taken_at: Instant,
        options: &LeaseOptions,
        stop: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Result<Stopped> {
        let third = options.lease / 3;
        // When the lease was last made to run a whole lease from now: sent
        // before the database answered, so the true expiry is later.
        let mut renewed = taken_at;
        let mut appended = self.appended.subscribe();
        let mut resumed = false;
        // The cursor as the database has it: `lease.cursor` runs ahead of it
        // between two writes (see CURSOR_EVERY).
        let mut stored = lease.cursor;
        loop {
            if *stop.borrow() {
                if lease.cursor != stored {
                    self.renew(&lease, Some(lease.cursor), options).await?;
                }
                self.db.release_consumer_lease(&lease).await?;
                return Ok(Stopped::Stopping);
            }
            if renewed.elapsed() >= third {
                let sent = Instant::now();
                if !self.renew(&lease, Some(lease.cursor), options).await? {
                    return Ok(Stopped::Lost);
                }
                renewed = sent;
                stored = lease.cursor;
            }
            if !resumed {
                if let Err(e) = consumer.resume().await {
                    tracing::warn!(consumer = %lease.name, error = %e, "cannot resume the consumer; retrying");
                    self.pause(RETRY_AFTER.min(third), stop).await;
                    continue;
                }
                resumed = true;
            }
            // Marked seen before reading, so an event appended while the
            // page is read wakes the next wait.
            appended.borrow_and_update();
            let rows = self.db.events_after(lease.cursor, None, PAGE).await?;
            let Some(last) = rows.last().map(|r| r.id) else {
                if lease.cursor != stored {
                    // Caught up: the cursor the consumer reached is stored
                    // before waiting.
                    let sent = Instant::now();
                    if !self.renew(&lease, Some(lease.cursor), options).await? {
                        return Ok(Stopped::Lost);
                    }
                    renewed = sent;
                    stored = lease.cursor;
                }
                let renew_in = third.saturating_sub(renewed.elapsed());
                tokio::select! {
                    () = tokio::time::sleep(renew_in.min(POLL)) => {}
                    _ = appended.changed() => {}
                    _ = stop.changed() => {}
                }
                continue;
            };
            let records = rows.iter().map(audit_record).collect::<Result<Vec<_>>>()?;
            // Hand events over only with a third of the lease still ahead,
            // for the handling itself and for the servers' clocks to differ.
            if renewed.elapsed() >= third {
                let sent = Instant::now();
                if !self.renew(&lease, None, options).await? {
                    return Ok(Stopped::Lost);
                }
                renewed = sent;
            }
            if let Err(e) = consumer.handle(&records).await {
                // A consumer that names its own wait (a writer backing off
                // from a failing endpoint) logs its failures itself.
                if e.retry_after.is_some() {
                    tracing::debug!(consumer = %lease.name, error = %e, after = lease.cursor, "the consumer waits before going on");
                } else {
                    tracing::warn!(consumer = %lease.name, error = %e, after = lease.cursor, "the consumer cannot handle events; retrying");
                }
                resumed = false;
                if let Some(handled) = e.handled.filter(|h| *h > lease.cursor && *h <= last) {
                    lease.cursor = handled;
                }
                // A long back-off is waited out in steps that keep the
                // lease renewed (and store the cursor the consumer reached).
                let until = Instant::now() + e.retry_after.unwrap_or(RETRY_AFTER);
                loop {
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() || *stop.borrow() {
                        break;
                    }
                    self.pause(left.min(third.saturating_sub(renewed.elapsed())), stop)
                        .await;
                    if renewed.elapsed() >= third {
                        let sent = Instant::now();
                        if !self.renew(&lease, Some(lease.cursor), options).await? {
                            return Ok(Stopped::Lost);
                        }
                        renewed = sent;
                        stored = lease.cursor;
                    }
                }
                continue;
            }
            lease.cursor = last;
            // The cursor is written at most every CURSOR_EVERY while events
            // keep coming, and at once when the consumer caught up: on
            // SQLite each write waits for the one write lock the
            // deployments contend for, and a write per page held the next
            // page back behind them. What a crash loses is only the cursor's
            // last moves: those events are offered again, as at least once
            // allows.
            if renewed.elapsed() >= CURSOR_EVERY {
                let sent = Instant::now();
                if !self.renew(&lease, Some(last), options).await? {
                    return Ok(Stopped::Lost);
                }
                renewed = sent;
                stored = last;
            }
        }
    }

    /// Runs the consumers of `family` until `stop` turns true: one
    /// [`Tugboat::run_consumer`] task per name the family lists, read again
    /// every few seconds and at once when this server announces a change
    /// ([`Tugboat::consumers_changed`]); a consumer whose name is no longer
    /// listed is stopped (its lease given up).
    pub async fn run_consumer_family(
        self,
        family: std::sync::Arc<dyn ConsumerFamily>,
        options: LeaseOptions,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        use std::collections::HashMap;
        let mut running: HashMap<String, (tokio::sync::watch::Sender<bool>, tokio::task::JoinHandle<()>)> =
            HashMap::new();
        let mut changed = self.consumers_changed.subscribe();
        while !*stop.borrow() {
            changed.borrow_and_update();
            match family.names(&self).await {
                Ok(names) => {
                    let wanted: std::collections::HashSet<String> = names.into_iter().collect();
                    running.retain(|name, (stop_one, task)| {
                        // A task that ended by itself (its row deleted) is
                        // started again if still listed.
                        let keep = wanted.contains(name) && !task.is_finished();
                        if !keep {
                            let _ = stop_one.send(true);
                        }
                        keep
                    });
                    for name in wanted {
                        if running.contains_key(&name) {
                            continue;
                        }
                        let (stop_one, stopped) = tokio::sync::watch::channel(false);
                        let consumer = family.make(&self, &name);
                        let task = tokio::spawn(self.clone().run_consumer(consumer, options.clone(), stopped));
                        running.insert(name, (stop_one, task));
                    }
                }
                Err(e) => tracing::warn!(family = family.family(), error = %e, "cannot list the consumers"),
            }
            tokio::select! {
                () = tokio::time::sleep(FAMILY_RESCAN) => {}
                _ = changed.changed() => {}
                _ = stop.changed() => {}
            }
        }
        for (_, (stop_one, task)) in running {
            let _ = stop_one.send(true);
            let _ = task.await;
        }
    }

    /// Tells this server's consumer families to read their names again (a
    /// webhook was created or deleted, a pipeline applied).
    pub fn consumers_changed(&self) {
        self.consumers_changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Extends `lease` (moving its cursor to `cursor`, when given); `false`:
    /// it was taken over.
    async fn renew(&self, lease: &ConsumerLease, cursor: Option<i64>, options: &LeaseOptions) -> Result<bool> {
        let until = self.now() + options.lease;
        Ok(self.db.renew_consumer_lease(lease, cursor, until).await?)
    }

    async fn pause(&self, d: Duration, stop: &mut tokio::sync::watch::Receiver<bool>) {
        tokio::select! {
            () = tokio::time::sleep(d) => {}
            _ = stop.changed() => {}
        }
    }
}

/// How often a running consumer looks for events recorded by other servers
/// on the same database (its own server's wake it at once).
const POLL: Duration = Duration::from_millis(200);

/// How often a busy consumer's cursor is written to the database.
const CURSOR_EVERY: Duration = Duration::from_millis(250);
