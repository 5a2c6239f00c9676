//! The event log's hash chain, as rules without I/O: how an event's hash is
//! made from its predecessor's hash, its id and its canonical JSON, and how
//! a walk over the log in id order finds the first event that breaks the
//! chain. Reading the rows and parsing the JSON is the callers' business.
//!
//! An event's hash is the sha256 of `tugboat-event`, its predecessor's hash
//! (as `sha256:<hex>`), its id (decimal) and its canonical JSON, separated
//! by newlines. The first event's predecessor is [`genesis`]. So changing an
//! event's JSON changes its hash; changing its stored hash as well breaks
//! the link from the event after it; deleting an event breaks the link from
//! its successor (or, for the newest event, the log's head, which names the
//! newest id and hash).

use std::fmt;

use crate::Digest;

/// The predecessor of the first event: sha256 with every bit zero.
pub fn genesis() -> Digest {
    Digest::from_bytes([0; 32])
}

/// The hash of the event `id` whose canonical JSON is `body` and whose
/// predecessor's hash is `prev`.
pub fn link(prev: &Digest, id: i64, body: &str) -> Digest {
    // The predecessor as `sha256:<hex>`, written on the stack: verifying
    // hashes every event.
    let mut prev_hex = [0u8; 64];
    hex::encode_to_slice(prev.as_bytes(), &mut prev_hex).expect("32 bytes are 64 hex digits");
    let mut h = crate::Hasher::new();
    h.update(b"tugboat-event\n");
    h.update(crate::digest::PREFIX.as_bytes());
    h.update(&prev_hex);
    h.update(b"\n");
    h.update(id.to_string().as_bytes());
    h.update(b"\n");
    h.update(body.as_bytes());
    h.finish()
}

/// One stored event as the chain sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored<'a> {
    pub id: i64,
    /// The hash it says its predecessor has (`None`: never chained).
    pub prev: Option<Digest>,
    /// Its own hash as stored.
    pub hash: Option<Digest>,
    /// Its canonical JSON as stored.
    pub body: &'a str,
}

/// Where the chain breaks: the first event found wrong, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    /// The event named: the one that is wrong, or whose predecessor is.
    pub id: i64,
    pub problem: Problem,
}

/// What is wrong at a [`Break`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The event's JSON (or id) no longer hashes to its stored hash: it was
    /// changed after it was recorded.
    HashMismatch { stored: Digest, computed: Digest },
    /// The event does not follow the event before it in the log: the one
    /// it was recorded after was deleted, or was changed and given a new
    /// hash.
    PredecessorMissing {
        /// The hash the event says its predecessor has.
        expected: Digest,
        /// The hash of the event now before it (or [`genesis`] when none is).
        found: Digest,
        /// The id of the event now before it, if any.
        before: Option<i64>,
    },
    /// The event carries no hash: it was written by something other than
    /// Tugboat's log.
    Unchained,
    /// A stored column disagrees with the event's JSON (`kind`, `service`,
    /// `build_id`, `at`, `actor`), or the JSON is not an event.
    Unreadable(String),
    /// The log's head names a newer event than the walk found: the newest
    /// events (up to this id) were deleted.
    NewestMissing {
        /// The id of the newest event the walk found (0: none).
        last: i64,
    },
    /// The log's head names another hash for the newest event than it has.
    HeadMismatch { head: Digest, found: Digest },
}

impl fmt::Display for Break {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = self.id;
        match &self.problem {
            Problem::HashMismatch { stored, computed } => write!(
                f,
                "event {id} was changed after it was recorded: its content hashes to {computed}, not to its stored hash {stored}"
            ),
            Problem::PredecessorMissing {
                expected,
                found,
                before: Some(before),
            } => write!(
                f,
                "the predecessor of event {id} is missing: it was recorded after an event with hash {expected}, but the event before it now (event {before}) has hash {found}; an event between them was deleted, or event {before} was changed"
            ),
            Problem::PredecessorMissing { expected, .. } => write!(
                f,
                "the predecessor of event {id} is missing: it was recorded after an event with hash {expected}, but no event is before it now; the events before it were deleted"
            ),
            Problem::Unchained => write!(
                f,
                "event {id} has no hash: it was not recorded through Tugboat's event log"
            ),
            Problem::Unreadable(what) => write!(f, "event {id} was changed after it was recorded: {what}"),
            Problem::NewestMissing { last } => write!(
                f,
                "event {id} is missing: the log's head says it is the newest event, but the newest event found is {last}; the newest events were deleted"
            ),
            Problem::HeadMismatch { head, found } => write!(
                f,
                "event {id} was changed after it was recorded: the log's head records its hash as {head}, but it is stored as {found}"
            ),
        }
    }
}

/// A walk over the log in id order: feed it every event with
/// [`Walk::step`], then [`Walk::finish`] with the log's head.
#[derive(Debug, Clone)]
pub struct Walk {
    /// The last event seen and its hash.
    last: Option<(i64, Digest)>,
    events: u64,
}

impl Default for Walk {
    fn default() -> Self {
        Walk::new()
    }
}

impl Walk {
    pub fn new() -> Walk {
        Walk { last: None, events: 0 }
    }

    /// How many events the walk has checked.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Checks the next event (ids must come in increasing order).
    pub fn step(&mut self, e: &Stored<'_>) -> Result<(), Break> {
        let (Some(prev), Some(hash)) = (e.prev, e.hash) else {
            return Err(Break {
                id: e.id,
                problem: Problem::Unchained,
            });
        };
        let (before, found) = match self.last {
            Some((id, hash)) => (Some(id), hash),
            None => (None, genesis()),
        };
        if prev != found {
            return Err(Break {
                id: e.id,
                problem: Problem::PredecessorMissing {
                    expected: prev,
                    found,
                    before,
                },
            });
        }
        let computed = link(&prev, e.id, e.body);
        if computed != hash {
            return Err(Break {
                id: e.id,
                problem: Problem::HashMismatch { stored: hash, computed },
            });
        }
        self.last = Some((e.id, hash));
        self.events += 1;
        Ok(())
    }

    /// Checks the end of the log against its head: the id and hash of the
    /// newest event recorded (`(0, genesis())` for an empty log).
    pub fn finish(&self, head_id: i64, head_hash: &Digest) -> Result<u64, Break> {
        let (last, hash) = self.last.unwrap_or((0, genesis()));
        if head_id > last {
            return Err(Break {
                id: head_id,
                problem: Problem::NewestMissing { last },
            });
        }
        if head_id == last && &hash != head_hash {
            return Err(Break {
                id: last,
                problem: Problem::HeadMismatch {
                    head: *head_hash,
                    found: hash,
                },
            });
        }
        // Events past the head were committed after the head was read.
        Ok(self.events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chain of `n` events with bodies `{"n":i}`.
    fn chain(n: i64) -> Vec<(i64, Digest, Digest, String)> {
        let mut prev = genesis();
        (1..=n)
            .map(|id| {
                let body = format!("{{\"n\":{id}}}");
                let hash = link(&prev, id, &body);
                let row = (id, prev, hash, body);
                prev = hash;
                row
            })
            .collect()
    }

    fn walk(rows: &[(i64, Digest, Digest, String)], head: (i64, Digest)) -> Result<u64, Break> {
        let mut w = Walk::new();
        for (id, prev, hash, body) in rows {
            w.step(&Stored {
                id: *id,
                prev: Some(*prev),
                hash: Some(*hash),
                body,
            })?;
        }
        w.finish(head.0, &head.1)
    }

    #[test]
    fn an_intact_chain_verifies_and_an_empty_one_too() {
        let rows = chain(5);
        let head = (5, rows[4].2);
        assert_eq!(walk(&rows, head), Ok(5));
        assert_eq!(walk(&[], (0, genesis())), Ok(0));
    }

    #[test]
    fn the_hash_covers_the_predecessor_the_id_and_the_body() {
        let a = link(&genesis(), 1, "{}");
        assert_ne!(a, link(&genesis(), 2, "{}"));
        assert_ne!(a, link(&genesis(), 1, "{ }"));
        assert_ne!(a, link(&a, 1, "{}"));
        assert_eq!(a, link(&genesis(), 1, "{}"));
    }

    #[test]
    fn the_hash_is_the_documented_sha256_of_its_parts() {
        let prev = Digest::of(b"the event before");
        let text = format!("tugboat-event\n{prev}\n42\n{{\"kind\":\"service.created\"}}");
        assert_eq!(
            link(&prev, 42, "{\"kind\":\"service.created\"}"),
            Digest::of(text.as_bytes())
        );
    }

    #[test]
    fn an_edited_event_is_named() {
        let mut rows = chain(5);
        let head = (5, rows[4].2);
        rows[2].3 = "{\"n\":99}".into();
        let e = walk(&rows, head).unwrap_err();
        assert_eq!(e.id, 3);
        assert!(matches!(e.problem, Problem::HashMismatch { .. }), "{e}");
        assert!(e.to_string().contains("event 3 was changed"), "{e}");
    }

    #[test]
    fn an_edited_event_with_a_new_hash_breaks_the_link_from_its_successor() {
        let mut rows = chain(5);
        let head = (5, rows[4].2);
        rows[2].3 = "{\"n\":99}".into();
        rows[2].2 = link(&rows[2].1, 3, &rows[2].3);
        let e = walk(&rows, head).unwrap_err();
        assert_eq!(e.id, 4);
        assert!(e.to_string().contains("event 3 was changed"), "{e}");
    }

    #[test]
    fn a_deleted_event_is_found_by_its_successor() {
        let mut rows = chain(5);
        let head = (5, rows[4].2);
        rows.remove(2);
        let e = walk(&rows, head).unwrap_err();
        assert_eq!(e.id, 4);
        assert!(
            matches!(e.problem, Problem::PredecessorMissing { before: Some(2), .. }),
            "{e}"
        );
        assert!(e.to_string().contains("predecessor of event 4 is missing"), "{e}");
    }

    #[test]
    fn deleting_the_first_or_the_newest_event_is_found() {
        let mut rows = chain(3);
        let head = (3, rows[2].2);
        rows.remove(0);
        let e = walk(&rows, head).unwrap_err();
        assert_eq!(e.id, 2);
        assert!(matches!(e.problem, Problem::PredecessorMissing { before: None, .. }));

        let mut rows = chain(3);
        rows.pop();
        let e = walk(&rows, head).unwrap_err();
        assert_eq!(
            e,
            Break {
                id: 3,
                problem: Problem::NewestMissing { last: 2 }
            }
        );
        let e = walk(&[], head).unwrap_err();
        assert!(e.to_string().contains("event 3 is missing"), "{e}");
    }

    #[test]
    fn an_event_without_hashes_is_unchained() {
        let mut w = Walk::new();
        let e = w
            .step(&Stored {
                id: 7,
                prev: None,
                hash: None,
                body: "{}",
            })
            .unwrap_err();
        assert_eq!(e.problem, Problem::Unchained);
    }

    #[test]
    fn events_committed_after_the_head_was_read_do_not_break_the_walk() {
        let rows = chain(4);
        assert_eq!(walk(&rows, (3, rows[2].2)), Ok(4));
        let e = walk(&rows, (4, rows[2].2)).unwrap_err();
        assert!(matches!(e.problem, Problem::HeadMismatch { .. }));
    }
}
