//! `Authorization: Bearer <token>`, read as RFC 9110 says: the scheme is case-insensitive.

use axum::http::{header, HeaderMap};

/// The token of a Bearer `Authorization` header, if the request has one.
pub fn token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        HeaderMap::from_iter([(header::AUTHORIZATION, value.parse().unwrap())])
    }

    #[test]
    fn the_scheme_is_case_insensitive_and_nothing_else_is_a_bearer_token() {
        assert_eq!(token(&headers("Bearer abc")), Some("abc"));
        assert_eq!(token(&headers("bearer abc")), Some("abc"));
        assert_eq!(token(&headers("BEARER  abc")), Some("abc"));
        assert_eq!(token(&headers("Basic abc")), None);
        assert_eq!(token(&headers("abc")), None);
        assert_eq!(token(&HeaderMap::new()), None);
    }
}
