//! Reading a webhook POST's body within the memory the webhook may spend on bodies.
//!
//! A body must be read whole before its signature can be checked, so anyone who
//! reaches the port can make the bridge buffer `inbound.body_limit` per connection:
//! 1,000 connections sending 1 MiB each (in under two seconds) grew the process by
//! 800 MB, for as long as they took to finish their bodies. So every body being read
//! or handled takes its bytes from one budget (`inbound.body_memory`) as they arrive,
//! and gives them back when its request is done. A body that does not fit is answered
//! 503 at once (X sends it again), and never buffered; a body's announced length is
//! not taken before its bytes arrive, so announcing costs nothing and holds nothing.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap};
use futures::StreamExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The memory all webhook bodies share, and the most one body may have.
pub(crate) struct BodyBudget {
    bytes: Arc<Semaphore>,
    per_body: usize,
}

/// A body read whole, holding its bytes of the budget until it is dropped.
pub(crate) struct HeldBody {
    pub bytes: Bytes,
    _held: OwnedSemaphorePermit,
}

/// Why a body was not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BodyRefusal {
    /// Over the per-body limit (413).
    TooLarge,
    /// The bodies being read already hold the budget (503: X sends it again).
    NoRoom,
    /// The body broke off or stopped arriving (400).
    Unreadable,
}

impl BodyBudget {
    /// `total` bytes for all bodies at once, at most `per_body` for one.
    pub(crate) fn new(total: usize, per_body: usize) -> BodyBudget {
        BodyBudget {
            bytes: Arc::new(Semaphore::new(total.min(Semaphore::MAX_PERMITS))),
            per_body,
        }
    }

    /// Reads `body`, whose request came with `headers`, taking its bytes from the
    /// budget piece by piece as they arrive.
    pub(crate) async fn read(
        &self,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<HeldBody, BodyRefusal> {
        let announced = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        if announced.is_some_and(|length| length > self.per_body as u64) {
            return Err(BodyRefusal::TooLarge);
        }
        let mut held = self.take(0)?;
        let mut pieces: Vec<Bytes> = Vec::new();
        let mut length = 0usize;
        let mut stream = body.into_data_stream();
        while let Some(piece) = stream.next().await {
            let piece = piece.map_err(|_| BodyRefusal::Unreadable)?;
            length += piece.len();
            if length > self.per_body {
                return Err(BodyRefusal::TooLarge);
            }
            held.merge(self.take(piece.len())?);
            pieces.push(piece);
        }
        let bytes = match pieces.len() {
            0 => Bytes::new(),
            1 => pieces.remove(0),
            _ => {
                let mut whole = Vec::with_capacity(length);
                for piece in pieces {
                    whole.extend_from_slice(&piece);
                }
                Bytes::from(whole)
            }
        };
        Ok(HeldBody { bytes, _held: held })
    }

    fn take(&self, bytes: usize) -> Result<OwnedSemaphorePermit, BodyRefusal> {
        let bytes = u32::try_from(bytes).map_err(|_| BodyRefusal::NoRoom)?;
        self.bytes
            .clone()
            .try_acquire_many_owned(bytes)
            .map_err(|_| BodyRefusal::NoRoom)
    }

    /// Bytes of the budget not held by any body (tests).
    #[cfg(test)]
    pub(crate) fn available(&self) -> usize {
        self.bytes.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(pieces: &[&'static [u8]]) -> Body {
        let pieces: Vec<Result<Bytes, std::io::Error>> =
            pieces.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        Body::from_stream(futures::stream::iter(pieces))
    }

    #[tokio::test]
    async fn a_body_holds_its_bytes_until_dropped_and_one_past_the_budget_is_refused() {
        let budget = BodyBudget::new(10, 8);
        let first = budget
            .read(&HeaderMap::new(), body(&[b"abc", b"def"]))
            .await
            .unwrap();
        assert_eq!(first.bytes.as_ref(), b"abcdef");
        assert_eq!(budget.available(), 4);
        let refused = budget.read(&HeaderMap::new(), body(&[b"ab", b"cde"])).await;
        assert_eq!(refused.err(), Some(BodyRefusal::NoRoom));
        assert_eq!(
            budget.available(),
            4,
            "a refused body gives back what it took"
        );
        drop(first);
        assert_eq!(budget.available(), 10);
        let too_large = budget
            .read(&HeaderMap::new(), body(&[b"abcde", b"fghij"]))
            .await;
        assert_eq!(too_large.err(), Some(BodyRefusal::TooLarge));
        let mut announced = HeaderMap::new();
        announced.insert(header::CONTENT_LENGTH, "9".parse().unwrap());
        let too_large = budget.read(&announced, body(&[])).await;
        assert_eq!(too_large.err(), Some(BodyRefusal::TooLarge));
        assert_eq!(budget.available(), 10);
    }

    #[tokio::test]
    async fn a_body_that_breaks_off_is_unreadable() {
        let budget = BodyBudget::new(10, 8);
        let broken = Body::from_stream(futures::stream::iter(vec![
            Ok(Bytes::from_static(b"ab")),
            Err(std::io::Error::other("reset")),
        ]));
        let refused = budget.read(&HeaderMap::new(), broken).await;
        assert_eq!(refused.err(), Some(BodyRefusal::Unreadable));
        assert_eq!(budget.available(), 10);
    }
}
