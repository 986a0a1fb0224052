//! The shape both campaign-node sagas (`refresh`, `firmware`) share: a
//! step is effects for the runner to carry out, then either the saga to
//! store for the next tick or how the node ended.

#[derive(Debug, Clone, PartialEq)]
pub struct Step<S, E, End> {
    pub effects: Vec<E>,
    pub next: Next<S, End>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Next<S, End> {
    Go(S),
    Finish(End),
}

impl<S: Clone, E, End> Step<S, E, End> {
    pub fn with(effects: Vec<E>, next: Next<S, End>) -> Self {
        Step { effects, next }
    }

    pub fn go(saga: S) -> Self {
        Step::with(vec![], Next::Go(saga))
    }

    /// The same phase: waiting.
    pub fn stay(saga: &S) -> Self {
        Step::go(saga.clone())
    }

    pub fn finish(end: End) -> Self {
        Step::with(vec![], Next::Finish(end))
    }
}
