//! Grants of paced rollouts: which agents may take an environment's build
//! now.
//!
//! Every grant is decided in the database: one transaction takes the
//! rollout's lock ([`tug_db::RolloutLock`]), reads the counts of the live
//! agents, applies the rule of [`tug_core::grant`] and records the grants,
//! so servers sharing one database never grant together more than the
//! strategy allows.
//!
//! What this module keeps in memory only spares the database. Per rollout,
//! each server has a waiting room: the agents that asked and wait for a
//! place, in the order they came; the agents it knows may go; and, after a
//! decision that left agents waiting, why, which stands until a place may
//! have freed: an agent of the environment reported healthy on the build
//! or gave it up through this server, the rollout was resumed here, or
//! [`RECHECK`] passed (for what happens through other servers, and for
//! agents going stale). One decision then admits as many waiting agents as
//! there are places, records their grants together and wakes those agents'
//! held long-polls; the others keep waiting without a query.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tug_core::grant::{self, Wait};
use tug_core::states::RolloutState;
use tug_core::{BuildId, EnvName, ServiceName, Strategy};

use crate::agents::STALE_AFTER;
use crate::{Grant, Pacing, Result, Tugboat};

/// How long a decision that left agents waiting stands when nothing this
/// server sees frees a place: places freed through other servers, and by
/// in-flight agents going stale, are found within this.
pub(crate) const RECHECK: Duration = Duration::from_secs(1);

/// A room nobody waited in for this long is closed (what it knew is read
/// from the database again when needed).
const IDLE: Duration = Duration::from_secs(120);

/// The waiting rooms of this server, one per rollout (an environment's
/// deployment).
#[derive(Default)]
pub(crate) struct Rooms(Mutex<HashMap<RoomKey, Arc<Room>>>);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RoomKey {
    service: ServiceName,
    env: EnvName,
    seq: i64,
}

struct Room {
    key: RoomKey,
    build: BuildId,
    state: Mutex<RoomState>,
    /// Held while this server takes a decision about the rollout: the
    /// database serialises decisions anyway, and a second one at once on
    /// this server would only find what the first left.
    deciding: tokio::sync::Mutex<()>,
    /// Woken when a place may have freed.
    hint: Notify,
}

struct RoomState {
    /// The strategy of the newest pipeline seen.
    strategy: Strategy,
    /// Agents that may take the build: granted (by any server) or running
    /// it already.
    cleared: HashSet<String>,
    waiting: HashMap<String, Waiter>,
    /// The waiting agents not cleared, by their turn.
    queue: BTreeMap<u64, String>,
    next_turn: u64,
    /// Moves whenever a place may have freed.
    generation: u64,
    /// Why agents wait, from the last decision that left some waiting.
    blocked: Option<Blocked>,
    last_used: Instant,
    closed: bool,
}

struct Waiter {
    turn: u64,
    /// Requests of this agent holding a [`Place`].
    holders: usize,
    cleared: watch::Sender<bool>,
}

struct Blocked {
    wait: Wait,
    generation: u64,
    at: Instant,
}

/// An agent's place in a rollout's waiting room, held by its request while
/// it waits. Dropping it leaves the room.
pub struct Place {
    room: Arc<Room>,
    agent: String,
    cleared: watch::Receiver<bool>,
}

impl std::fmt::Debug for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Place")
            .field("rollout", &self.room.key)
            .field("agent", &self.agent)
            .finish()
    }
}

impl Place {
    /// Resolves once the agent may take the build (it was granted a place).
    pub async fn cleared(&mut self) {
        if self.cleared.wait_for(|c| *c).await.is_err() {
            // The room forgot the agent (it cannot while a place is held):
            // nothing will clear it any more.
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut s = self.room.lock();
        if let Some(w) = s.waiting.get_mut(&self.agent) {
            w.holders = w.holders.saturating_sub(1);
            if w.holders == 0 {
                let turn = w.turn;
                s.waiting.remove(&self.agent);
                s.queue.remove(&turn);
            }
        }
    }
}

impl Room {
    fn lock(&self) -> MutexGuard<'_, RoomState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_cleared(&self, agent: &str) -> bool {
        self.lock().cleared.contains(agent)
    }

    fn is_waiting(&self, agent: &str) -> bool {
        self.lock().waiting.contains_key(agent)
    }

    /// Why agents wait, while the last decision stands.
    fn blocked_now(&self) -> Option<Wait> {
        let s = self.lock();
        s.blocked
            .as_ref()
            .filter(|b| b.generation == s.generation && b.at.elapsed() < RECHECK)
            .map(|b| b.wait.clone())
    }

    fn enter(self: &Arc<Room>, agent: &str) -> Place {
        let mut s = self.lock();
        s.last_used = Instant::now();
        let cleared = if let Some(w) = s.waiting.get_mut(agent) {
            w.holders += 1;
            w.cleared.subscribe()
        } else {
            let turn = s.next_turn;
            s.next_turn += 1;
            let is_cleared = s.cleared.contains(agent);
            let (tx, rx) = watch::channel(is_cleared);
            s.waiting.insert(
                agent.to_string(),
                Waiter {
                    turn,
                    holders: 1,
                    cleared: tx,
                },
            );
            if !is_cleared {
                s.queue.insert(turn, agent.to_string());
            }
            rx
        };
        Place {
            room: self.clone(),
            agent: agent.to_string(),
            cleared,
        }
    }

    /// Marks `agents` as allowed to go and wakes their requests.
    fn clear(&self, agents: &[String]) {
        let mut s = self.lock();
        for agent in agents {
            s.cleared.insert(agent.clone());
            if let Some(turn) = s.waiting.get(agent).map(|w| w.turn) {
                s.queue.remove(&turn);
            }
            if let Some(w) = s.waiting.get(agent) {
                w.cleared.send_replace(true);
            }
        }
    }

    /// The agents waiting for a place, in turn, the strategy to decide by
    /// and the generation the decision is taken at.
    fn asking(&self) -> (Vec<String>, Strategy, u64) {
        let s = self.lock();
        (s.queue.values().cloned().collect(), s.strategy.clone(), s.generation)
    }

    /// Records a decision taken at `generation`: `admitted` may go, the
    /// others wait for `wait`.
    fn settle(&self, admitted: &[String], wait: Option<Wait>, generation: u64) {
        self.clear(admitted);
        let mut s = self.lock();
        s.blocked = wait.map(|wait| Blocked {
            wait,
            generation,
            at: Instant::now(),
        });
    }

    /// A place may have freed: the next request or the room's own round
    /// decides again.
    fn hint(&self) {
        self.lock().generation += 1;
        self.hint.notify_one();
    }

    /// Takes the newest strategy; a changed one may free places.
    fn follow(&self, strategy: &Strategy) {
        let mut s = self.lock();
        if &s.strategy != strategy {
            s.strategy = strategy.clone();
            s.generation += 1;
            drop(s);
            self.hint.notify_one();
        }
    }
}

impl Rooms {
    fn get(&self, key: &RoomKey) -> Option<Arc<Room>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).get(key).cloned()
    }

    /// The room of `key`, and whether it was just opened. Rooms of older
    /// deployments of the environment are closed: their agents' requests
    /// learn of the new deployment from the channel.
    fn open(&self, key: RoomKey, build: &BuildId, strategy: &Strategy) -> (Arc<Room>, bool) {
        let mut rooms = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(room) = rooms.get(&key) {
            return (room.clone(), false);
        }
        rooms.retain(|k, room| {
            let older = k.service == key.service && k.env == key.env && k.seq < key.seq;
            if older {
                room.lock().closed = true;
                room.hint.notify_one();
            }
            !older
        });
        let room = Arc::new(Room {
            key: key.clone(),
            build: build.clone(),
            state: Mutex::new(RoomState {
                strategy: strategy.clone(),
                cleared: HashSet::new(),
                waiting: HashMap::new(),
                queue: BTreeMap::new(),
                next_turn: 0,
                generation: 0,
                blocked: None,
                last_used: Instant::now(),
                closed: false,
            }),
            deciding: tokio::sync::Mutex::new(()),
            hint: Notify::new(),
        });
        rooms.insert(key, room.clone());
        (room, true)
    }

    /// Closes `room` if nobody waited in it for [`IDLE`]; whether it did.
    fn close_if_idle(&self, room: &Arc<Room>) -> bool {
        let mut rooms = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut s = room.lock();
        if s.closed {
            return true;
        }
        if !s.waiting.is_empty() || s.last_used.elapsed() < IDLE {
            return false;
        }
        s.closed = true;
        drop(s);
        if rooms.get(&room.key).is_some_and(|r| Arc::ptr_eq(r, room)) {
            rooms.remove(&room.key);
        }
        true
    }
}

impl Tugboat {
    /// Whether `agent` may take `build`, which `pacing`'s environment rolls
    /// out by `strategy`: at once when it runs the build or was granted it,
    /// else when the rule admits it (see the module's documentation). An
    /// agent told to wait gets its [`Place`], which resolves when a later
    /// decision admits it.
    pub(crate) async fn grant_place(
        &self,
        pacing: &Pacing,
        build: &BuildId,
        strategy: &Strategy,
        agent: &str,
    ) -> Result<Grant> {
        let key = RoomKey {
            service: pacing.service.clone(),
            env: pacing.environment.name.clone(),
            seq: pacing.seq,
        };
        let (room, opened) = self.rooms.open(key.clone(), build, strategy);
        if opened {
            tokio::spawn(self.clone().hold_room(room.clone()));
        }
        room.follow(strategy);
        if room.is_cleared(agent) {
            return Ok(Grant::yes());
        }
        if !room.is_waiting(agent) {
            // What the room cannot know: the agent runs the build already,
            // or a decision (perhaps on another server) granted it before.
            // Asked before the agent joins the queue, so that no decision
            // grants an agent that needs no grant.
            let on_build = self
                .db
                .agent(agent)
                .await?
                .is_some_and(|a| a.build.as_ref() == Some(build));
            if on_build || self.db.has_grant(&key.service, &key.env, key.seq, agent).await? {
                room.clear(&[agent.to_string()]);
                return Ok(Grant::yes());
            }
        }
        let place = room.enter(agent);
        for _ in 0..2 {
            if room.is_cleared(agent) {
                return Ok(Grant::yes());
            }
            if let Some(wait) = room.blocked_now() {
                return Ok(Grant::wait_in(wait.message(build, &key.env), place));
            }
            let _deciding = room.deciding.lock().await;
            if room.is_cleared(agent) || room.blocked_now().is_some() {
                continue;
            }
            self.decide_grants(&room).await?;
        }
        if room.is_cleared(agent) {
            return Ok(Grant::yes());
        }
        let why = room.blocked_now().map_or_else(
            || "waiting for a place in the rollout".to_string(),
            |w| w.message(build, &key.env),
        );
        Ok(Grant::wait_in(why, place))
    }

    /// Takes one decision for the agents waiting in `room`, under the
    /// rollout's database lock. The caller holds `room.deciding`.
    async fn decide_grants(&self, room: &Room) -> Result<()> {
        let (asking, strategy, generation) = room.asking();
        if asking.is_empty() {
            return Ok(());
        }
        let now = self.now();
        let key = &room.key;
        let mut lock = self
            .db
            .lock_rollout(&key.service, &key.env, key.seq, &room.build, now)
            .await?;
        let rollout = lock.rollout();
        let halted = (rollout.state == RolloutState::Halted)
            .then(|| rollout.reason.clone().unwrap_or_else(|| "no reason given".to_string()));
        let counts = lock.counts(now - STALE_AFTER).await?;
        let admission = grant::admit(&strategy, halted.as_deref(), &counts, asking.len());
        let admitted = &asking[..admission.admitted];
        if !admitted.is_empty() {
            lock.grant(admitted, now).await?;
        }
        lock.commit().await?;
        room.settle(admitted, admission.wait, generation);
        Ok(())
    }

    /// A place in the rollout of `pacing`'s deployment may have freed (an
    /// agent became healthy on the build or gave it up, the rollout was
    /// resumed): agents waiting on this server are admitted again.
    pub(crate) fn place_may_have_freed(&self, pacing: &Pacing) {
        let key = RoomKey {
            service: pacing.service.clone(),
            env: pacing.environment.name.clone(),
            seq: pacing.seq,
        };
        if let Some(room) = self.rooms.get(&key) {
            room.hint();
        }
    }

    /// Keeps a room's decision fresh while agents wait in it: decides again
    /// when a place may have freed, and every [`RECHECK`] otherwise; closes
    /// the room once nobody waited in it for a while.
    async fn hold_room(self, room: Arc<Room>) {
        loop {
            tokio::select! {
                () = room.hint.notified() => {}
                () = tokio::time::sleep(RECHECK) => {}
            }
            if self.rooms.close_if_idle(&room) {
                return;
            }
            if room.lock().queue.is_empty() || room.blocked_now().is_some() {
                continue;
            }
            let _deciding = room.deciding.lock().await;
            if room.blocked_now().is_some() {
                continue;
            }
            if let Err(e) = self.decide_grants(&room).await {
                tracing::warn!(rollout = ?room.key, error = %e, "cannot decide the rollout's grants; trying again");
            }
        }
    }
}
