//! Model state kept between the frames of one session (an SNN's membranes, an LLM's
//! KV cache), bounded: each session's state is reserved at its model's
//! [`SplitNet::state_size`](splitstream_models::SplitNet::state_size) against a
//! per-session and a total cap before it is created, and freed with the session.
//!
//! A plain, synchronous store: sessions open and close states here, the batch worker
//! borrows them while it runs a session's frames. Nothing in it waits or times.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use splitstream_models::net::NetState;
use splitstream_models::SplitNet;

use crate::batcher::SessionId;

/// The caps on model state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateLimits {
    /// Most bytes one session's state may reserve.
    pub per_session: usize,
    /// Most bytes all sessions' states may reserve together.
    pub total: usize,
}

impl Default for StateLimits {
    /// 1 GiB a session, 8 GiB in all: a small LLM's KV cache at a few thousand
    /// tokens fits one session, and a handful of them fit an edge GPU.
    fn default() -> Self {
        Self {
            per_session: 1 << 30,
            total: 8 << 30,
        }
    }
}

/// Why a session's state was not created.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StateRefusal {
    /// The model's state is larger than one session may hold.
    #[error("model state of {need} bytes exceeds the edge's per-session cap of {cap} bytes")]
    PerSession {
        /// Bytes the model's state may reach.
        need: usize,
        /// The per-session cap.
        cap: usize,
    },
    /// The edge's total state budget has no room for it now.
    #[error(
        "the edge's model-state budget is full ({reserved} of {cap} bytes reserved, \
         {need} more needed): retry later or use another edge"
    )]
    Total {
        /// Bytes this session needs.
        need: usize,
        /// Bytes reserved by other sessions.
        reserved: usize,
        /// The total cap.
        cap: usize,
    },
}

/// One session's state for one model, shared between its session and the worker.
pub type StateHandle = Arc<Mutex<Box<dyn NetState>>>;

/// Locks a state (a worker that panicked while holding it left it as it was; the
/// next frame still gets it).
pub fn lock(state: &StateHandle) -> MutexGuard<'_, Box<dyn NetState>> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

struct Entry {
    state: StateHandle,
    reserved: usize,
}

/// Every session's model state, with its reservations.
#[derive(Default)]
pub struct StateStore {
    limits: StateLimits,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    reserved: usize,
    states: HashMap<(SessionId, Arc<str>), Entry>,
}

impl StateStore {
    /// An empty store under `limits`.
    pub fn new(limits: StateLimits) -> Self {
        Self {
            limits,
            inner: Mutex::default(),
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a session of a model whose state may reach `need` bytes could ever be
    /// admitted (the handshake's check; the total is checked when the state opens).
    pub fn admissible(&self, need: usize) -> Result<(), StateRefusal> {
        match need > self.limits.per_session {
            true => Err(StateRefusal::PerSession {
                need,
                cap: self.limits.per_session,
            }),
            false => Ok(()),
        }
    }

    /// The state of `session` for `model`, created (and reserved) on first use;
    /// `None` for a stateless model.
    pub fn open(
        &self,
        session: SessionId,
        model: &Arc<str>,
        net: &dyn SplitNet,
    ) -> Result<Option<StateHandle>, StateRefusal> {
        let Some(need) = net.state_size() else {
            return Ok(None);
        };
        let key = (session, model.clone());
        if let Some(e) = self.inner().states.get(&key) {
            return Ok(Some(e.state.clone()));
        }
        self.admissible(need)?;
        // Reserve first, create outside the lock (a KV cache may take a while), and
        // give the reservation back if the model has no state after all.
        {
            let mut inner = self.inner();
            if inner.reserved.saturating_add(need) > self.limits.total {
                return Err(StateRefusal::Total {
                    need,
                    reserved: inner.reserved,
                    cap: self.limits.total,
                });
            }
            inner.reserved += need;
        }
        let Some(state) = net.new_state() else {
            self.inner().reserved -= need;
            return Ok(None);
        };
        let state: StateHandle = Arc::new(Mutex::new(state));
        self.inner().states.insert(
            key,
            Entry {
                state: state.clone(),
                reserved: need,
            },
        );
        Ok(Some(state))
    }

    /// Frees every state of `session` (it disconnected).
    pub fn close_session(&self, session: SessionId) {
        let mut inner = self.inner();
        let mut freed = 0;
        inner.states.retain(|(s, _), e| {
            let keep = *s != session;
            if !keep {
                freed += e.reserved;
            }
            keep
        });
        inner.reserved -= freed;
    }
}
