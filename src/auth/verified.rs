//! Tokens already verified in this isolate: the HMAC check and the claims' parse are made once
//! per token, not once per request (they were about 0.3 ms of a publish's isolate time in a CPU
//! profile of 2,000 publishes with one token). A token found here is checked again for what can
//! change with time or use: its expiry, and the query-token lifetime when it comes in a query.
//! Only tokens that passed `verify` in full are kept, under the key they were verified with, and
//! at most `capacity` of them (the oldest goes first).

use super::{check_query_lifetime, refuse, verify, Grant, TokenSource, CLOCK_SKEW_SECONDS};
use crate::error::{Error, TokenFault};
use std::collections::{HashMap, VecDeque};

pub struct VerifiedTokens {
    /// The key the kept tokens were verified with: another key empties the cache.
    secret: Vec<u8>,
    grants: HashMap<String, Grant>,
    /// Tokens in the order they were kept, to let the oldest go.
    order: VecDeque<String>,
    capacity: usize,
}

impl VerifiedTokens {
    pub fn new(capacity: usize) -> VerifiedTokens {
        VerifiedTokens {
            secret: Vec::new(),
            grants: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// As `auth::verify`, from the cache when `token` passed it before under `secret`.
    pub fn verify(
        &mut self,
        token: &str,
        secret: &[u8],
        now: i64,
        source: TokenSource,
        query_max_lifetime: i64,
    ) -> Result<Grant, Error> {
        if self.secret != secret {
            self.grants.clear();
            self.order.clear();
            self.secret = secret.to_vec();
        }
        if let Some(grant) = self.grants.get(token) {
            // `nbf` passed when it was verified, and time only moves on: only `exp` can have
            // come since.
            if now > grant.exp.saturating_add(CLOCK_SKEW_SECONDS) {
                self.grants.remove(token);
                self.order.retain(|t| t != token);
                return Err(refuse(TokenFault::Expired));
            }
            if source == TokenSource::Query {
                check_query_lifetime(grant, now, query_max_lifetime)?;
            }
            return Ok(grant.clone());
        }
        let grant = verify(token, secret, now, source, query_max_lifetime)?;
        if self.order.len() >= self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.grants.remove(&oldest);
            }
        }
        self.grants.insert(token.to_string(), grant.clone());
        self.order.push_back(token.to_string());
        Ok(grant)
    }

    pub fn len(&self) -> usize {
        self.grants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.grants.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{sign, Claims, Rights};

    const NOW: i64 = 1_700_000_000;
    const SECRET: &[u8] = b"test-secret";

    fn token(exp: i64, iat: Option<i64>) -> String {
        let claims = Claims {
            exp: Some(exp),
            iat,
            nbf: None,
            sub: None,
            edgehub: Rights {
                publish: vec!["*".into()],
                subscribe: vec!["a".into()],
                info: None,
            },
        };
        sign(&claims, SECRET)
    }

    #[test]
    fn a_kept_token_gives_the_same_grant_until_it_expires() {
        let mut cache = VerifiedTokens::new(8);
        let t = token(NOW + 60, None);
        let first = cache.verify(&t, SECRET, NOW, TokenSource::Header, 300);
        assert!(first.is_ok());
        assert_eq!(cache.len(), 1);
        let again = cache.verify(&t, SECRET, NOW + 10, TokenSource::Header, 300);
        assert_eq!(again, first);
        let late = NOW + 60 + CLOCK_SKEW_SECONDS + 1;
        let expired = cache.verify(&t, SECRET, late, TokenSource::Header, 300);
        assert_eq!(expired, Err(refuse(TokenFault::Expired)));
        assert!(cache.is_empty(), "an expired token is dropped");
    }

    #[test]
    fn a_bad_token_is_refused_as_verify_refuses_it_and_never_kept() {
        let mut cache = VerifiedTokens::new(8);
        let t = token(NOW + 60, None);
        let forged = format!("{}x", &t[..t.len() - 1]);
        let direct = verify(&forged, SECRET, NOW, TokenSource::Header, 300);
        let cached = cache.verify(&forged, SECRET, NOW, TokenSource::Header, 300);
        assert!(cached.is_err());
        assert_eq!(cached, direct);
        assert!(cache.is_empty());
    }

    #[test]
    fn another_key_does_not_find_tokens_kept_under_the_first() {
        let mut cache = VerifiedTokens::new(8);
        let t = token(NOW + 60, None);
        assert!(cache
            .verify(&t, SECRET, NOW, TokenSource::Header, 300)
            .is_ok());
        let other = cache.verify(&t, b"another-secret", NOW, TokenSource::Header, 300);
        assert_eq!(other, Err(refuse(TokenFault::Signature)));
        assert!(cache.is_empty());
    }

    #[test]
    fn a_kept_header_token_in_a_query_is_held_to_the_query_lifetime() {
        let mut cache = VerifiedTokens::new(8);
        let long = token(NOW + 3600, Some(NOW));
        assert!(cache
            .verify(&long, SECRET, NOW, TokenSource::Header, 300)
            .is_ok());
        let in_query = cache.verify(&long, SECRET, NOW, TokenSource::Query, 300);
        assert_eq!(in_query, Err(refuse(TokenFault::QueryLifetime)));
        let short = token(NOW + 200, Some(NOW));
        assert!(cache
            .verify(&short, SECRET, NOW, TokenSource::Header, 300)
            .is_ok());
        assert!(cache
            .verify(&short, SECRET, NOW, TokenSource::Query, 300)
            .is_ok());
    }

    #[test]
    fn at_most_capacity_tokens_are_kept_the_oldest_going_first() {
        let mut cache = VerifiedTokens::new(3);
        let tokens: Vec<String> = (0..5).map(|k| token(NOW + 60 + k, None)).collect();
        for t in &tokens {
            assert!(cache
                .verify(t, SECRET, NOW, TokenSource::Header, 300)
                .is_ok());
        }
        assert_eq!(cache.len(), 3);
        assert!(!cache.grants.contains_key(&tokens[0]));
        assert!(!cache.grants.contains_key(&tokens[1]));
        assert!(cache.grants.contains_key(&tokens[4]));
    }
}
