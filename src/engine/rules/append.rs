//! The append rules (spec §5.7 producers, `Stream-Seq`, closing, content
//! type, size limit) and what a duplicate confirms.

use bytes::Bytes;

use super::WriterView;
use crate::engine::error::EngineError;
use crate::engine::request::{AppendRequest, Appended};
use crate::protocol::header::ContentType;
use crate::protocol::json::{self, JsonError};
use crate::protocol::producer::{self, ProducerDecision, ProducerState};
use crate::storage::{Append, ClosedBy, StreamId};

/// What the append rules need to know of a stream besides its writer state.
#[derive(Clone, Copy, Debug)]
pub struct StreamFacts<'a> {
    /// The stream's content type.
    pub content_type: &'a ContentType,
    /// Where its own data begins (its fork offset, or 0).
    pub base: u64,
    /// Most bytes of its own it may hold.
    pub max_stream_bytes: u64,
}

/// Checks what an append must carry before its stream is even looked up:
/// data or a close, and a content type with data.
///
/// # Errors
/// [`EngineError::EmptyBody`] or [`EngineError::MissingContentType`].
pub fn check_append_request(request: &AppendRequest) -> Result<(), EngineError> {
    if request.body.is_empty() && !request.close {
        return Err(EngineError::EmptyBody);
    }
    if !request.body.is_empty() && request.content_type.is_none() {
        return Err(EngineError::MissingContentType);
    }
    Ok(())
}

/// The bytes an append stores: a JSON stream's body flattened into its
/// messages, any other body as sent.
///
/// # Errors
/// A JSON body that is not acceptable (spec: JSON mode).
pub fn append_payload(content_type: &ContentType, body: &Bytes) -> Result<Bytes, JsonError> {
    if body.is_empty() {
        Ok(Bytes::new())
    } else if content_type.is_json() {
        json::flatten(body, false).map(|flat| Bytes::from(flat.bytes))
    } else {
        // Owned bytes: a slice of the request's receive buffer would keep
        // the whole buffer alive as long as the stored record.
        Ok(Bytes::copy_from_slice(body))
    }
}

/// An append the rules accepted: what to store and what to answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedWrite {
    /// Where the data starts: the stream's tail before the append.
    pub start: u64,
    /// The record to store; empty for a close without data.
    pub data: Bytes,
    /// The producer's state once the append is committed.
    pub producer: Option<(String, ProducerState)>,
    /// The new `Stream-Seq` watermark.
    pub stream_seq: Option<String>,
    /// Set when the append closes the stream.
    pub close: Option<Option<ClosedBy>>,
}

impl PlannedWrite {
    /// The tail once the append is committed.
    pub fn end(&self) -> u64 {
        self.start + self.data.len() as u64
    }

    /// The answer once the append is committed.
    pub fn outcome(&self) -> Appended {
        Appended {
            tail: self.end(),
            closed: self.close.is_some(),
            wrote: true,
            producer: self.producer.as_ref().map(|(_, state)| *state),
        }
    }

    /// The storage mutation of stream `id` that commits it.
    pub fn into_append(self, id: StreamId) -> Append {
        Append {
            id,
            start: self.start,
            data: self.data,
            producer: self.producer,
            stream_seq: self.stream_seq,
            close: self.close,
        }
    }
}

/// What a request that writes nothing (a duplicate) confirms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Confirms {
    /// The stream is closed; `producer` names the retrying producer.
    Closed {
        /// `Producer-Id` of the retry, if any.
        producer: Option<String>,
    },
    /// The producer's `(epoch, seq)` was accepted.
    Producer {
        /// `Producer-Id`.
        id: String,
        /// The state the retry confirms.
        accepted: ProducerState,
    },
}

/// The rules' verdict on an append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppendPlan {
    /// New data or a close: store it.
    Write(PlannedWrite),
    /// A retry of something written (or being written): answer once what
    /// it confirms is committed.
    Duplicate(Confirms),
}

/// Applies the append rules to a stream whose writer state is `view`.
/// `data` is the stored form of the body ([`append_payload`]); its JSON
/// error surfaces only after the header rules, as clients expect.
///
/// # Errors
/// The refusal: closed, content type mismatch, a producer refusal,
/// `Stream-Seq` regression, a bad JSON body, or the size limit.
pub fn plan_append(
    view: &impl WriterView,
    stream: StreamFacts<'_>,
    request: &AppendRequest,
    data: Result<Bytes, JsonError>,
) -> Result<AppendPlan, EngineError> {
    if let Some(closed_by) = view.closed() {
        let retry_of_close = match (&request.producer, closed_by) {
            (Some(p), Some(by)) => p.id == by.producer_id && p.epoch == by.epoch && p.seq == by.seq,
            _ => false,
        };
        if retry_of_close || (request.body.is_empty() && request.producer.is_none()) {
            // A retry of the closing request, or a repeated plain close:
            // both are idempotent (spec §4.3, §5.7).
            return Ok(AppendPlan::Duplicate(Confirms::Closed {
                producer: request.producer.as_ref().map(|p| p.id.clone()),
            }));
        }
        if let Some(p) = &request.producer
            && let Some(state) = view.producer(&p.id)
            && p.epoch < state.epoch
        {
            return Err(EngineError::StaleEpoch {
                current: state.epoch,
            });
        }
        return Err(EngineError::Closed { tail: view.tail() });
    }
    if let Some(requested) = request
        .content_type
        .as_ref()
        .filter(|_| !request.body.is_empty())
        && !requested.matches(stream.content_type)
    {
        return Err(EngineError::ContentTypeMismatch);
    }
    let mut producer_next = None;
    if let Some(p) = &request.producer {
        match producer::decide(view.producer(&p.id), p.epoch, p.seq) {
            ProducerDecision::Accept { next } => producer_next = Some((p.id.clone(), next)),
            ProducerDecision::Duplicate { .. } => {
                return Ok(AppendPlan::Duplicate(Confirms::Producer {
                    id: p.id.clone(),
                    accepted: ProducerState {
                        epoch: p.epoch,
                        last_seq: p.seq,
                    },
                }));
            }
            ProducerDecision::StaleEpoch { current_epoch } => {
                return Err(EngineError::StaleEpoch {
                    current: current_epoch,
                });
            }
            ProducerDecision::Gap { expected, received } => {
                return Err(EngineError::SequenceGap { expected, received });
            }
            ProducerDecision::EpochMustStartAtZero => {
                return Err(EngineError::EpochMustStartAtZero);
            }
        }
    }
    if let Some(seq) = &request.stream_seq
        && view.stream_seq().is_some_and(|last| seq.as_str() <= last)
    {
        return Err(EngineError::StreamSeqRegression);
    }
    let data = data?;
    let start = view.tail();
    let limit = stream.max_stream_bytes;
    if start.saturating_sub(stream.base) + data.len() as u64 > limit {
        return Err(EngineError::StreamTooLarge { limit });
    }
    let close = request.close.then(|| {
        request.producer.as_ref().map(|p| ClosedBy {
            producer_id: p.id.clone(),
            epoch: p.epoch,
            seq: p.seq,
        })
    });
    Ok(AppendPlan::Write(PlannedWrite {
        start,
        data,
        producer: producer_next,
        stream_seq: request.stream_seq.clone(),
        close,
    }))
}

/// Where a duplicate stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Confirmation {
    /// What it confirms is committed: answer this.
    Confirmed(Appended),
    /// It is only pending: wait for the write in flight.
    Pending,
    /// It is neither committed nor pending: the original write failed.
    Lost,
}

/// Checks a duplicate against the committed and the effective (committed
/// plus pending) state. The state itself is checked, not the tail: a close
/// moves no tail, and other writers' appends may pass the position a failed
/// write would have reached.
pub fn confirmation(
    confirms: &Confirms,
    committed: &impl WriterView,
    effective: &impl WriterView,
) -> Confirmation {
    let (producer, done, pending) = match confirms {
        Confirms::Closed { producer } => (
            producer.as_deref(),
            committed.closed().is_some(),
            effective.closed().is_some(),
        ),
        Confirms::Producer { id, accepted } => (
            Some(id.as_str()),
            committed.producer(id).is_some_and(|s| s >= *accepted),
            effective.producer(id).is_some_and(|s| s >= *accepted),
        ),
    };
    if done {
        Confirmation::Confirmed(Appended {
            tail: committed.tail(),
            closed: committed.closed().is_some(),
            wrote: false,
            producer: producer.and_then(|id| committed.producer(id)),
        })
    } else if pending {
        Confirmation::Pending
    } else {
        Confirmation::Lost
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::engine::state::WriterState;
    use crate::protocol::header::ProducerHeaders;

    fn state(tail: u64) -> WriterState {
        WriterState::new(tail, None, [], None)
    }

    fn binary() -> ContentType {
        ContentType::new("application/octet-stream")
    }

    fn facts(content_type: &ContentType) -> StreamFacts<'_> {
        StreamFacts {
            content_type,
            base: 0,
            max_stream_bytes: 100,
        }
    }

    fn append(body: &'static [u8]) -> AppendRequest {
        AppendRequest {
            content_type: Some(binary()),
            body: Bytes::from_static(body),
            close: false,
            producer: None,
            stream_seq: None,
        }
    }

    fn produced(body: &'static [u8], epoch: u64, seq: u64) -> AppendRequest {
        AppendRequest {
            producer: Some(ProducerHeaders {
                id: "p".into(),
                epoch,
                seq,
            }),
            ..append(body)
        }
    }

    fn plan(view: &WriterState, request: &AppendRequest) -> Result<AppendPlan, EngineError> {
        let ct = binary();
        plan_append(view, facts(&ct), request, Ok(request.body.clone()))
    }

    fn write(plan: Result<AppendPlan, EngineError>) -> PlannedWrite {
        match plan {
            Ok(AppendPlan::Write(write)) => write,
            other => panic!("not a write: {other:?}"),
        }
    }

    #[test]
    fn requests_need_data_or_a_close_and_a_content_type_with_data() {
        let mut request = append(b"");
        assert!(matches!(
            check_append_request(&request),
            Err(EngineError::EmptyBody)
        ));
        request.close = true;
        assert!(check_append_request(&request).is_ok());
        let mut request = append(b"x");
        request.content_type = None;
        assert!(matches!(
            check_append_request(&request),
            Err(EngineError::MissingContentType)
        ));
    }

    #[test]
    fn an_append_writes_at_the_tail_and_answers_the_new_tail() {
        let planned = write(plan(&state(5), &append(b"abc")));
        assert_eq!(planned.start, 5);
        assert_eq!(planned.end(), 8);
        assert_eq!(
            planned.outcome(),
            Appended {
                tail: 8,
                closed: false,
                wrote: true,
                producer: None
            }
        );
        let stored = planned.into_append(3);
        assert_eq!((stored.id, stored.start, stored.close), (3, 5, None));
    }

    #[test]
    fn content_types_must_match_only_when_data_is_sent() {
        let mut request = append(b"x");
        request.content_type = Some(ContentType::new("text/plain"));
        assert!(matches!(
            plan(&state(0), &request),
            Err(EngineError::ContentTypeMismatch)
        ));
        request.body = Bytes::new();
        request.close = true;
        assert!(write(plan(&state(0), &request)).close.is_some());
    }

    #[test]
    fn a_closed_stream_refuses_data_but_confirms_repeated_closes() {
        let mut closed = state(4);
        closed.extras_mut().closed = Some(Some(ClosedBy {
            producer_id: "p".into(),
            epoch: 1,
            seq: 3,
        }));
        closed.extras_mut().producers.insert(
            "p".into(),
            ProducerState {
                epoch: 1,
                last_seq: 3,
            },
        );
        assert!(matches!(
            plan(&closed, &append(b"x")),
            Err(EngineError::Closed { tail: 4 })
        ));
        let mut plain_close = append(b"");
        plain_close.close = true;
        assert_eq!(
            plan(&closed, &plain_close).expect("duplicate"),
            AppendPlan::Duplicate(Confirms::Closed { producer: None })
        );
        // The producer's retry of its closing request is a duplicate too …
        let mut retry = produced(b"x", 1, 3);
        retry.close = true;
        assert_eq!(
            plan(&closed, &retry).expect("duplicate"),
            AppendPlan::Duplicate(Confirms::Closed {
                producer: Some("p".into())
            })
        );
        // … an older epoch is stale, anything else finds the stream closed.
        assert!(matches!(
            plan(&closed, &produced(b"x", 0, 9)),
            Err(EngineError::StaleEpoch { current: 1 })
        ));
        assert!(matches!(
            plan(&closed, &produced(b"x", 1, 4)),
            Err(EngineError::Closed { .. })
        ));
    }

    #[test]
    fn a_close_by_a_producer_records_the_closing_tuple() {
        let mut request = produced(b"last", 2, 0);
        request.close = true;
        let planned = write(plan(&state(0), &request));
        assert_eq!(
            planned.close,
            Some(Some(ClosedBy {
                producer_id: "p".into(),
                epoch: 2,
                seq: 0
            }))
        );
        assert!(planned.outcome().closed);
    }

    #[test]
    fn producer_rules_decide_accept_duplicate_and_refusals() {
        let planned = write(plan(&state(0), &produced(b"a", 0, 0)));
        assert_eq!(
            planned.producer,
            Some((
                "p".into(),
                ProducerState {
                    epoch: 0,
                    last_seq: 0
                }
            ))
        );
        let mut seen = state(1);
        seen.extras_mut().producers = HashMap::from([(
            "p".to_owned(),
            ProducerState {
                epoch: 1,
                last_seq: 4,
            },
        )]);
        assert_eq!(
            plan(&seen, &produced(b"a", 1, 4)).expect("duplicate"),
            AppendPlan::Duplicate(Confirms::Producer {
                id: "p".into(),
                accepted: ProducerState {
                    epoch: 1,
                    last_seq: 4
                }
            })
        );
        assert!(matches!(
            plan(&seen, &produced(b"a", 0, 5)),
            Err(EngineError::StaleEpoch { current: 1 })
        ));
        assert!(matches!(
            plan(&seen, &produced(b"a", 1, 6)),
            Err(EngineError::SequenceGap {
                expected: 5,
                received: 6
            })
        ));
        assert!(matches!(
            plan(&seen, &produced(b"a", 2, 1)),
            Err(EngineError::EpochMustStartAtZero)
        ));
    }

    #[test]
    fn stream_seq_must_increase() {
        let mut seen = state(0);
        seen.extras_mut().stream_seq = Some("b".into());
        for (seq, ok) in [("a", false), ("b", false), ("c", true)] {
            let mut request = append(b"x");
            request.stream_seq = Some(seq.into());
            assert_eq!(plan(&seen, &request).is_ok(), ok, "{seq}");
        }
    }

    #[test]
    fn the_size_limit_counts_only_the_streams_own_bytes() {
        let ct = binary();
        let request = append(b"0123456789");
        let fork = StreamFacts {
            content_type: &ct,
            base: 95,
            max_stream_bytes: 100,
        };
        assert!(plan_append(&state(185), fork, &request, Ok(request.body.clone())).is_ok());
        assert!(matches!(
            plan_append(&state(186), fork, &request, Ok(request.body.clone())),
            Err(EngineError::StreamTooLarge { limit: 100 })
        ));
    }

    #[test]
    fn a_bad_json_body_is_reported_after_the_header_rules() {
        let json = ContentType::new("application/json");
        let mut request = append(b"[");
        request.content_type = Some(json.clone());
        request.stream_seq = Some("a".into());
        let data = append_payload(&json, &request.body);
        assert!(data.is_err());
        let mut seen = state(0);
        seen.extras_mut().stream_seq = Some("z".into());
        let stream = StreamFacts {
            content_type: &json,
            base: 0,
            max_stream_bytes: 100,
        };
        assert!(matches!(
            plan_append(&seen, stream, &request, data.clone()),
            Err(EngineError::StreamSeqRegression)
        ));
        assert!(matches!(
            plan_append(&state(0), stream, &request, data),
            Err(EngineError::Json(_))
        ));
        assert_eq!(
            append_payload(&json, &Bytes::from_static(b"[1,2]")).expect("valid"),
            "1,2,"
        );
    }

    #[test]
    fn a_duplicate_is_confirmed_pending_or_lost() {
        let confirms = Confirms::Producer {
            id: "p".into(),
            accepted: ProducerState {
                epoch: 0,
                last_seq: 1,
            },
        };
        let mut committed = state(3);
        let mut effective = state(3);
        assert_eq!(
            confirmation(&confirms, &committed, &effective),
            Confirmation::Lost
        );
        effective.extras_mut().producers.insert(
            "p".into(),
            ProducerState {
                epoch: 0,
                last_seq: 1,
            },
        );
        assert_eq!(
            confirmation(&confirms, &committed, &effective),
            Confirmation::Pending
        );
        committed.extras_mut().producers = effective.extras_mut().producers.clone();
        assert_eq!(
            confirmation(&confirms, &committed, &effective),
            Confirmation::Confirmed(Appended {
                tail: 3,
                closed: false,
                wrote: false,
                producer: Some(ProducerState {
                    epoch: 0,
                    last_seq: 1
                })
            })
        );
        let close = Confirms::Closed { producer: None };
        assert_eq!(
            confirmation(&close, &committed, &effective),
            Confirmation::Lost
        );
    }
}
