//! The admin token (`api.admin_token`): one check shared by the HTTP admin
//! routes, the gRPC `Admin` service and forwarded cluster writes.
//!
//! Owns: how a presented `Authorization: Bearer TOKEN` value is compared
//! with the configured token. Must not touch: where the header comes from
//! (each front end reads its own) or what is refused (the callers decide).

/// The metadata / header key that carries the token.
pub const HEADER: &str = "authorization";

/// True when no token is configured (`want` empty) or `header` is exactly
/// `Bearer <want>`. Compared in constant time: the token is a secret.
pub fn bearer_ok(header: Option<&str>, want: &str) -> bool {
    if want.is_empty() {
        return true;
    }
    let got = header.and_then(|h| h.strip_prefix("Bearer ")).unwrap_or("");
    got.len() == want.len()
        && got
            .bytes()
            .zip(want.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// The header value that presents `token`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// `attach` was given a token that cannot travel in a header value.
#[derive(Debug, thiserror::Error)]
#[error("the admin token contains characters a header cannot carry")]
pub struct TokenNotHeaderValue {
    #[source]
    pub source: tonic::metadata::errors::InvalidMetadataValue,
}

/// Adds the token to an outgoing gRPC request; nothing when `token` is
/// empty. A token that is not a valid header value is an error the caller
/// reports (it cannot have come from a working config).
pub fn attach<T>(request: &mut tonic::Request<T>, token: &str) -> Result<(), TokenNotHeaderValue> {
    if token.is_empty() {
        return Ok(());
    }
    let value = bearer(token)
        .parse()
        .map_err(|source| TokenNotHeaderValue { source })?;
    request.metadata_mut().insert(HEADER, value);
    Ok(())
}

/// The `authorization` value of an incoming gRPC request, if readable.
pub fn presented<T>(request: &tonic::Request<T>) -> Option<&str> {
    request.metadata().get(HEADER).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_rules() {
        assert!(bearer_ok(None, ""), "no token configured: open");
        assert!(bearer_ok(Some("Bearer s3cret"), "s3cret"));
        assert!(!bearer_ok(None, "s3cret"));
        assert!(
            !bearer_ok(Some("s3cret"), "s3cret"),
            "the Bearer prefix is required"
        );
        assert!(!bearer_ok(Some("Bearer s3cre"), "s3cret"));
        assert!(!bearer_ok(Some("Bearer s3cretX"), "s3cret"));
    }

    #[test]
    fn attach_and_read_back() {
        let mut r = tonic::Request::new(());
        attach(&mut r, "").unwrap();
        assert_eq!(presented(&r), None);
        attach(&mut r, "tok").unwrap();
        assert_eq!(presented(&r), Some("Bearer tok"));
        assert!(bearer_ok(presented(&r), "tok"));
        let err = attach(&mut r, "bad\ntoken").unwrap_err();
        assert_eq!(
            err.to_string(),
            "the admin token contains characters a header cannot carry"
        );
        assert!(std::error::Error::source(&err).is_some());
        assert_eq!(presented(&r), Some("Bearer tok"), "left as it was");
    }
}
