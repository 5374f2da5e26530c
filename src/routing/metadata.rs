//! What a shard call carries besides its body: the remaining stage time as
//! the grpc-timeout and the coordinator's request id as the metadata
//! `x-request-id`, so the serving node logs its part of a request under the
//! same id as the coordinator (`api::internal` reads it with
//! `request_id_of`).
//!
//! Owns: the metadata key and both directions of it. Must not touch: what a
//! call asks (`client::SearchSpec`) or where it goes (`set`, `batch`).

use std::time::Instant;

/// gRPC metadata key of the request id on `ShardData.Search` and
/// `ShardData.SearchBatch`.
pub const REQUEST_ID_KEY: &str = "x-request-id";

/// Longest request id a server takes from metadata (the public API refuses
/// longer ones); a longer value is cut, so a peer cannot flood the logs.
pub const MAX_REQUEST_ID_BYTES: usize = 128;

/// `body` as a request with the time left before `deadline` as its timeout
/// and `request_id` as metadata; None when the deadline has passed (nothing
/// is sent then: nobody waits for the answer). An id that is not a valid
/// metadata value (the public API takes any text) is left off: the search
/// matters more than its log line.
pub fn outgoing<T>(
    body: T,
    deadline: Option<Instant>,
    request_id: Option<&str>,
) -> Option<tonic::Request<T>> {
    let mut req = tonic::Request::new(body);
    if let Some(d) = deadline {
        let left = d.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        req.set_timeout(left);
    }
    if let Some(v) = request_id.and_then(|id| id.parse().ok()) {
        req.metadata_mut().insert(REQUEST_ID_KEY, v);
    }
    Some(req)
}

/// The request id a caller sent with `req`, if any (at most
/// `MAX_REQUEST_ID_BYTES`, cut at a character boundary).
pub fn request_id_of<T>(req: &tonic::Request<T>) -> Option<&str> {
    let id = req.metadata().get(REQUEST_ID_KEY)?.to_str().ok()?;
    let mut end = id.len().min(MAX_REQUEST_ID_BYTES);
    while !id.is_char_boundary(end) {
        end -= 1;
    }
    Some(&id[..end]).filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_passed_deadline_sends_nothing() {
        let past = Instant::now() - std::time::Duration::from_millis(1);
        assert!(outgoing((), Some(past), Some("r1")).is_none());
        let later = Instant::now() + std::time::Duration::from_secs(5);
        let req = outgoing((), Some(later), None).expect("time is left");
        assert!(req.metadata().get("grpc-timeout").is_some());
        assert!(outgoing((), None, None).is_some());
    }

    #[test]
    fn the_request_id_travels_as_metadata_and_reads_back() {
        let req = outgoing((), None, Some("req-42")).unwrap();
        assert_eq!(req.metadata().get(REQUEST_ID_KEY).unwrap(), "req-42");
        assert_eq!(request_id_of(&req), Some("req-42"));
        // none given, none sent
        assert_eq!(request_id_of(&outgoing((), None, None).unwrap()), None);
        // not a valid header value: the call still goes out, without it
        let req = outgoing((), None, Some("bad\nid")).unwrap();
        assert_eq!(request_id_of(&req), None);
    }

    #[test]
    fn a_long_id_from_a_peer_is_cut() {
        let long = "a".repeat(500);
        let mut req = tonic::Request::new(());
        req.metadata_mut()
            .insert(REQUEST_ID_KEY, long.parse().unwrap());
        assert_eq!(request_id_of(&req).unwrap().len(), MAX_REQUEST_ID_BYTES);
    }
}
