//! Reading what a request carries: its body within a limit ([`BodyLimit`]) and at a
//! pace ([`BodyPace`]), JSON, and path segments.

use std::sync::{Arc, OnceLock};
use std::time::Duration as StdDuration;

use axum::body::Body;
use serde::de::DeserializeOwned;

use super::error::{ApiResult, BodyError};
use crate::server::service::ServiceError;

/// Every body may take this long whatever its size ...
pub const BODY_GRACE: StdDuration = StdDuration::from_secs(10);
/// ... plus one second per this many bytes (a floor of 64 KiB/s on average) ...
pub const BODY_MIN_RATE: u64 = 64 * 1024;
/// ... and may not pause longer than this between two chunks.
pub const BODY_MAX_STALL: StdDuration = StdDuration::from_secs(30);

/// How much of an oversized body is read and discarded before answering 413, so that
/// ordinary clients, which send the whole body before reading the answer, see the 413
/// instead of a broken pipe. Beyond this the connection is simply closed. Only
/// authenticated clients get this: an anonymous one is answered at once.
const DRAIN_LIMIT: usize = 16 * 1024 * 1024;

/// How much of a body a route reads.
#[derive(Clone, Copy, Debug)]
pub(super) struct BodyLimit {
    /// The largest body accepted.
    max: usize,
    /// How much is read (and dropped) before answering 413 to a larger one.
    drain: usize,
}

impl BodyLimit {
    /// For a client that proved who it is (agent certificate or admin token).
    pub(super) const fn authenticated(max: usize) -> BodyLimit {
        BodyLimit {
            max,
            drain: if max > DRAIN_LIMIT { max } else { DRAIN_LIMIT },
        }
    }

    /// For a client that did not: nothing beyond `max` is read.
    pub(super) const fn anonymous(max: usize) -> BodyLimit {
        BodyLimit { max, drain: max }
    }
}

/// How fast a request body must arrive: by `grace` plus one second per `min_rate` bytes
/// received (an average rate floor that a large upload can meet however long it is),
/// and never pausing longer than `max_stall`. A client sending a byte a second is cut
/// off after `grace`; one that sends part of a body and stops, after at most
/// `max_stall`.
#[derive(Clone, Copy, Debug)]
pub(super) struct BodyPace {
    grace: StdDuration,
    min_rate: u64,
    max_stall: StdDuration,
}

/// The pace every route asks for.
pub(super) const BODY_PACE: BodyPace = BodyPace {
    grace: BODY_GRACE,
    min_rate: BODY_MIN_RATE,
    max_stall: BODY_MAX_STALL,
};

impl BodyPace {
    /// When the next chunk must have arrived, given when the body started, when the last
    /// chunk came and how many bytes came so far.
    fn deadline<I>(&self, started: I, last_chunk: I, received: u64) -> I
    where
        I: std::ops::Add<StdDuration, Output = I> + Ord,
    {
        let earned = StdDuration::from_millis(received.saturating_mul(1000) / self.min_rate.max(1));
        std::cmp::min(started + self.grace + earned, last_chunk + self.max_stall)
    }

    fn too_slow(&self, received: u64, elapsed: StdDuration) -> BodyError {
        BodyError::TooSlow {
            received,
            elapsed_ms: elapsed.as_millis(),
            grace_s: self.grace.as_secs(),
            min_rate: self.min_rate,
            stall_s: self.max_stall.as_secs(),
        }
    }
}

/// The request body as a stream that ends with [`BodyError::TooSlow`] when the client
/// falls behind `pace` (the error is also put in `failure`, for callers that hand the
/// stream on and get a different error back).
pub(super) fn paced(
    body: Body,
    pace: BodyPace,
    failure: Arc<OnceLock<BodyError>>,
) -> impl futures_util::Stream<Item = Result<axum::body::Bytes, PacedError>> + Unpin {
    use futures_util::StreamExt as _;
    let started = tokio::time::Instant::now();
    let state = (Some(body.into_data_stream()), started, 0u64);
    Box::pin(futures_util::stream::unfold(
        state,
        move |(stream, last_chunk, received)| {
            let failure = failure.clone();
            async move {
                let mut stream = stream?;
                let deadline = pace.deadline(started, last_chunk, received);
                let error = match tokio::time::timeout_at(deadline, stream.next()).await {
                    Ok(None) => return None,
                    Ok(Some(Ok(chunk))) => {
                        let received = received + chunk.len() as u64;
                        return Some((Ok(chunk), (Some(stream), tokio::time::Instant::now(), received)));
                    }
                    Ok(Some(Err(error))) => BodyError::Unreadable(error.to_string()),
                    Err(_) => pace.too_slow(received, started.elapsed()),
                };
                let message = error.to_string();
                let _ = failure.set(error);
                Some((Err(PacedError(message)), (None, last_chunk, received)))
            }
        },
    ))
}

/// The error item of [`paced`]: the message of the [`BodyError`] it stored.
#[derive(Debug)]
pub(super) struct PacedError(String);

impl std::fmt::Display for PacedError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// Reads an optional JSON body: an empty body is the type's default.
pub(super) async fn read_optional_json<T: DeserializeOwned + Default>(body: Body, limit: BodyLimit) -> ApiResult<T> {
    let bytes = read_body(body, limit).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    Ok(parse_json(&bytes)?)
}

/// Reads a JSON body within `limit`: 413 over it, 408 too slow, 400 when malformed.
pub(super) async fn read_json<T: DeserializeOwned>(body: Body, limit: BodyLimit) -> ApiResult<T> {
    Ok(parse_json(&read_body(body, limit).await?)?)
}

async fn read_body(body: Body, limit: BodyLimit) -> Result<Vec<u8>, BodyError> {
    use futures_util::StreamExt as _;
    // A declared length over what would be read (`drain` is at least `max`) is refused
    // before reading any of it.
    let declared = axum::body::HttpBody::size_hint(&body).lower();
    if declared > limit.drain as u64 {
        return Err(BodyError::TooLarge { limit: limit.max });
    }
    let failure = Arc::new(OnceLock::new());
    let mut stream = paced(body, BODY_PACE, failure.clone());
    let mut bytes = Vec::new();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|error| {
            failure
                .get()
                .cloned()
                .unwrap_or_else(|| BodyError::Unreadable(error.to_string()))
        })?;
        total += chunk.len();
        if total <= limit.max {
            bytes.extend_from_slice(&chunk);
        } else if total > limit.drain {
            break;
        }
    }
    if total > limit.max {
        return Err(BodyError::TooLarge { limit: limit.max });
    }
    Ok(bytes)
}

fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ServiceError> {
    serde_json::from_slice(bytes).map_err(|error| {
        let detail: String = error
            .to_string()
            .chars()
            .filter(|c| !c.is_control())
            .take(300)
            .collect();
        ServiceError::Invalid("bad_json", format!("invalid request body: {detail}"))
    })
}

pub(super) fn parse_path<T: std::str::FromStr>(text: &str, what: &'static str) -> Result<T, ServiceError>
where
    T::Err: std::fmt::Display,
{
    text.parse()
        .map_err(|error: T::Err| ServiceError::Invalid(what, error.to_string()))
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn body_pace_cuts_off_a_trickle_after_the_grace_period() {
        let started = Instant::now();
        // A byte a second: the 10 s grace is all it gets.
        let deadline = BODY_PACE.deadline(started, started + StdDuration::from_secs(9), 9);
        assert!(deadline <= started + BODY_GRACE + StdDuration::from_millis(1));
        assert!(deadline >= started + BODY_GRACE);
    }

    #[test]
    fn body_pace_lets_a_large_upload_run_at_the_rate_floor() {
        let started = Instant::now();
        // 1 GiB at 1 MiB/s takes 1024 s; by then the floor (64 KiB/s) allows 16,384 s + grace.
        let gib: u64 = 1 << 30;
        let now = started + StdDuration::from_secs(1024);
        let deadline = BODY_PACE.deadline(started, now, gib);
        assert_eq!(
            deadline,
            now + BODY_MAX_STALL,
            "only the stall limit binds a fast upload"
        );
        // Half of it at a quarter of the floor: too slow.
        let slow_now = started + StdDuration::from_secs(2 * 8192 + 100);
        let deadline = BODY_PACE.deadline(started, slow_now, gib / 4);
        assert!(deadline < slow_now, "{:?} past", slow_now - deadline);
    }

    #[test]
    fn body_pace_ends_a_body_that_stops() {
        let started = Instant::now();
        // 64 MiB fast, then nothing: the earned 1,024 s do not matter, the 30 s stall does.
        let last = started + StdDuration::from_secs(2);
        let deadline = BODY_PACE.deadline(started, last, 64 << 20);
        assert_eq!(deadline, last + BODY_MAX_STALL);
    }
}
