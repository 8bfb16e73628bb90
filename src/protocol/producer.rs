//! Idempotent producer rules (spec §5.7): the epoch/sequence state machine.
//!
//! Pure functions: given the stored state of one `(stream, Producer-Id)` and
//! the request's epoch and sequence, decide what happens. The caller writes
//! the returned state only after the append it guards has been committed.

/// What the server remembers per producer of a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ProducerState {
    /// The producer's current epoch.
    pub epoch: u64,
    /// The highest sequence accepted in that epoch.
    pub last_seq: u64,
}

/// The outcome of checking one producer request against stored state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProducerDecision {
    /// New data: write it, then store `next`.
    Accept {
        /// The state to store once the write is committed.
        next: ProducerState,
    },
    /// A retry of something already written: answer `204`, write nothing.
    Duplicate {
        /// The unchanged state, echoed in `Producer-Epoch` / `Producer-Seq`.
        current: ProducerState,
    },
    /// The request's epoch is older than the stored one: `403`.
    StaleEpoch {
        /// The stored epoch, echoed in `Producer-Epoch`.
        current_epoch: u64,
    },
    /// A sequence number was skipped: `409` with expected and received.
    Gap {
        /// The sequence the server expected next.
        expected: u64,
        /// The sequence the request carried.
        received: u64,
    },
    /// A new epoch must start at sequence 0: `400`.
    EpochMustStartAtZero,
}

/// Applies the producer rules.
pub fn decide(stored: Option<ProducerState>, epoch: u64, seq: u64) -> ProducerDecision {
    use ProducerDecision::*;
    let Some(state) = stored else {
        return if seq == 0 {
            Accept {
                next: ProducerState { epoch, last_seq: 0 },
            }
        } else {
            Gap {
                expected: 0,
                received: seq,
            }
        };
    };
    if epoch < state.epoch {
        return StaleEpoch {
            current_epoch: state.epoch,
        };
    }
    if epoch > state.epoch {
        return if seq == 0 {
            Accept {
                next: ProducerState { epoch, last_seq: 0 },
            }
        } else {
            EpochMustStartAtZero
        };
    }
    if seq <= state.last_seq {
        Duplicate { current: state }
    } else if seq == state.last_seq + 1 {
        Accept {
            next: ProducerState {
                epoch,
                last_seq: seq,
            },
        }
    } else {
        Gap {
            expected: state.last_seq + 1,
            received: seq,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn table_from_the_spec() {
        use ProducerDecision::*;
        let s = |epoch, last_seq| Some(ProducerState { epoch, last_seq });
        assert_eq!(
            decide(None, 3, 0),
            Accept {
                next: ProducerState {
                    epoch: 3,
                    last_seq: 0
                }
            }
        );
        assert_eq!(
            decide(None, 0, 2),
            Gap {
                expected: 0,
                received: 2
            }
        );
        assert_eq!(decide(s(2, 5), 1, 9), StaleEpoch { current_epoch: 2 });
        assert_eq!(
            decide(s(2, 5), 3, 0),
            Accept {
                next: ProducerState {
                    epoch: 3,
                    last_seq: 0
                }
            }
        );
        assert_eq!(decide(s(2, 5), 3, 1), EpochMustStartAtZero);
        assert_eq!(
            decide(s(2, 5), 2, 5),
            Duplicate {
                current: ProducerState {
                    epoch: 2,
                    last_seq: 5
                }
            }
        );
        assert_eq!(
            decide(s(2, 5), 2, 0),
            Duplicate {
                current: ProducerState {
                    epoch: 2,
                    last_seq: 5
                }
            }
        );
        assert_eq!(
            decide(s(2, 5), 2, 6),
            Accept {
                next: ProducerState {
                    epoch: 2,
                    last_seq: 6
                }
            }
        );
        assert_eq!(
            decide(s(2, 5), 2, 8),
            Gap {
                expected: 6,
                received: 8
            }
        );
    }

    proptest! {
        /// Replaying any request sequence, accepted states only ever grow and
        /// every accepted sequence number within an epoch is used once.
        #[test]
        fn accepted_state_is_monotonic(reqs in proptest::collection::vec((0u64..4, 0u64..6), 0..64)) {
            let mut state: Option<ProducerState> = None;
            let mut accepted = std::collections::HashSet::new();
            for (epoch, seq) in reqs {
                if let ProducerDecision::Accept { next } = decide(state, epoch, seq) {
                    if let Some(prev) = state { prop_assert!(next > prev); }
                    prop_assert!(accepted.insert((epoch, seq)));
                    state = Some(next);
                }
            }
        }
    }
}
