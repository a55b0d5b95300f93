//! Bearer-token authentication: an interceptor on every service but health.

use std::sync::Arc;
use tonic::{Request, Status};

/// Checks `authorization: Bearer <token>`; with no token configured, lets
/// everything through.
#[derive(Clone, Debug)]
pub struct BearerAuth {
    expected: Option<Arc<[u8]>>,
}

impl BearerAuth {
    /// An interceptor for `token` (empty: no authentication).
    pub fn new(token: &str) -> Self {
        Self {
            expected: (!token.is_empty()).then(|| Arc::from(format!("Bearer {token}").as_bytes())),
        }
    }
}

impl tonic::service::Interceptor for BearerAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else {
            return Ok(request);
        };
        match request.metadata().get("authorization") {
            None => Err(Status::unauthenticated(
                "missing bearer token: send metadata `authorization: Bearer <token>`",
            )),
            Some(given) if constant_time_eq(given.as_bytes(), expected) => Ok(request),
            Some(_) => Err(Status::unauthenticated("wrong bearer token")),
        }
    }
}

/// Compares without an early exit, so timing does not reveal the prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    fn with(header: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(h) = header {
            r.metadata_mut().insert("authorization", h.parse().unwrap());
        }
        r
    }

    #[test]
    fn token_is_required_and_checked() {
        let mut auth = BearerAuth::new("s3cret");
        assert!(auth.call(with(Some("Bearer s3cret"))).is_ok());
        let missing = auth.call(with(None)).unwrap_err();
        assert_eq!(missing.code(), tonic::Code::Unauthenticated);
        let wrong = auth.call(with(Some("Bearer s3cre"))).unwrap_err();
        assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
        assert!(BearerAuth::new("").call(with(None)).is_ok());
    }
}
