//! Token verification: a JWT from the upgrade request (or a `refresh`) becomes an
//! [`Identity`], or an [`AuthError`] naming why not. Signatures and claims are checked by the
//! `jsonwebtoken` crate; this file only picks the key (by algorithm family and `kid`) and maps
//! the outcome to our reasons. The algorithm is checked against the allowed list before any key
//! is tried, so `alg: none` and algorithm confusion (an HMAC token "signed" with an RSA public
//! key) never reach a verifier.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::pattern::Pattern;
use crate::protocol::envelope::{data_from_json, Data};

/// Largest `info` claim, in bytes of JSON.
pub const MAX_INFO_BYTES: usize = 1024;

/// Why a token was refused. Each has a one-line reason (the 401 body) and a label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token in the request.
    #[error("token missing")]
    Missing,
    /// Not a JWT (three base64url parts, JSON header and claims).
    #[error("token malformed")]
    Malformed,
    /// `exp` is past (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("token not yet valid")]
    NotYetValid,
    /// `aud` does not name the configured audience.
    #[error("wrong audience")]
    WrongAudience,
    /// `iss` is not the configured issuer.
    #[error("wrong issuer")]
    WrongIssuer,
    /// The `kid` names no configured key.
    #[error("unknown key id")]
    UnknownKid,
    /// The token's `alg` is not in `[auth] algorithms`.
    #[error("algorithm not allowed")]
    AlgorithmNotAllowed,
    /// No configured key verifies the signature.
    #[error("bad signature")]
    BadSignature,
    /// A required claim (`sub`, `exp`) is missing or empty.
    #[error("missing claim: {0}")]
    MissingClaim(&'static str),
    /// `info` is larger than [`MAX_INFO_BYTES`].
    #[error("info too large")]
    InfoTooLarge,
}

impl AuthError {
    /// Static label, usable as a metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            AuthError::Missing => "token_missing",
            AuthError::Malformed => "token_malformed",
            AuthError::Expired => "token_expired",
            AuthError::NotYetValid => "token_not_yet_valid",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::WrongIssuer => "wrong_issuer",
            AuthError::UnknownKid => "unknown_kid",
            AuthError::AlgorithmNotAllowed => "algorithm_not_allowed",
            AuthError::BadSignature => "bad_signature",
            AuthError::MissingClaim(_) => "missing_claim",
            AuthError::InfoTooLarge => "info_too_large",
        }
    }
}

/// What a connection may do, from a token's `rooms` claim (`{sub}` already expanded).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// `rooms.subscribe`: also `history`.
    pub subscribe: Vec<Pattern>,
    /// `rooms.publish`.
    pub publish: Vec<Pattern>,
    /// `rooms.presence` (the `subscribe` list when absent).
    pub presence: Vec<Pattern>,
}

/// A verified token.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// `sub`: the user id.
    pub sub: Arc<str>,
    /// `exp`, seconds since the Unix epoch.
    pub exp: u64,
    /// `info`: shown in presence and join/leave.
    pub info: Arc<Data>,
    /// `rooms`; `None`: the room classes' anonymous rights apply.
    pub grants: Option<Grants>,
    /// `api: true`: may call the HTTP API.
    pub api: bool,
}

/// The claims we read (everything else is ignored).
#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    exp: Option<u64>,
    #[serde(default)]
    info: Option<serde_json::Value>,
    /// `None`: absent (the room classes decide); `Some(None)`: `"rooms": null`, no grants.
    #[serde(default, deserialize_with = "present")]
    rooms: Option<Option<RoomsClaim>>,
    #[serde(default)]
    api: Option<bool>,
}

/// A claim that is present (even as `null`) becomes `Some`.
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

#[derive(Deserialize, Default)]
struct RoomsClaim {
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
    presence: Option<Vec<String>>,
}

/// The algorithm families and the keys configured for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Family {
    Hmac,
    Rsa,
    Ec,
    Ed,
}

fn family(a: Algorithm) -> Family {
    use Algorithm::*;
    match a {
        HS256 | HS384 | HS512 => Family::Hmac,
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => Family::Rsa,
        ES256 | ES384 => Family::Ec,
        EdDSA => Family::Ed,
    }
}

fn algorithms_of(f: Family) -> &'static [Algorithm] {
    use Algorithm::*;
    match f {
        Family::Hmac => &[HS256, HS384, HS512],
        Family::Rsa => &[RS256, RS384, RS512, PS256, PS384, PS512],
        Family::Ec => &[ES256, ES384],
        Family::Ed => &[EdDSA],
    }
}

/// Parse an algorithm name as JWT headers and `[auth] algorithms` write it.
pub fn parse_algorithm(name: &str) -> Option<Algorithm> {
    name.parse().ok()
}

/// A configured key.
struct Key {
    family: Family,
    kid: Option<String>,
    key: DecodingKey,
}

/// Why the key material was refused at start-up.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A PEM file that is no RSA, EC or Ed25519 public key.
    #[error("{path}: not an RSA, EC (P-256/P-384) or Ed25519 public key in PEM")]
    Pem {
        /// The file.
        path: String,
    },
    /// A JWKS that does not parse, or a key in it without `kid` or unusable.
    #[error("{path}: {reason}")]
    Jwks {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// An allowed algorithm no configured key can verify, or `none`.
    #[error("{0}")]
    Algorithms(String),
    /// `mode = "jwt"` without any key.
    #[error("no key configured: set hs256_secret, public_key_files or jwks_file")]
    NoKey,
}

/// What the verifier is built from (read and checked by `config`).
#[derive(Debug, Default, Clone)]
pub struct KeySource {
    /// HMAC secret.
    pub hs256_secret: Option<Vec<u8>>,
    /// (path, PEM text) of public keys.
    pub public_keys: Vec<(String, String)>,
    /// (path, JSON text) of a JWKS.
    pub jwks: Option<(String, String)>,
    /// Allowed algorithm names; empty: every algorithm a configured key verifies.
    pub algorithms: Vec<String>,
    /// Required audience.
    pub audience: Option<String>,
    /// Required issuer.
    pub issuer: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
}

/// Verifies tokens against the configured keys and rules.
pub struct Verifier {
    keys: Vec<Key>,
    allowed: HashSet<Algorithm>,
    /// Only a JWKS: a token must name its key.
    kid_required: bool,
    audience: Option<String>,
    issuer: Option<String>,
    leeway: Duration,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("keys", &self.keys.len())
            .field("allowed", &self.allowed)
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field("leeway", &self.leeway)
            .finish()
    }
}

impl Verifier {
    /// Build a verifier; fails on unusable key material or algorithm lists.
    pub fn new(src: &KeySource) -> Result<Verifier, KeyError> {
        let mut keys = Vec::new();
        if let Some(secret) = &src.hs256_secret {
            keys.push(Key {
                family: Family::Hmac,
                kid: None,
                key: DecodingKey::from_secret(secret),
            });
        }
        for (path, pem) in &src.public_keys {
            keys.push(pem_key(path, pem)?);
        }
        let mut kid_required = false;
        if let Some((path, json)) = &src.jwks {
            kid_required = keys.is_empty();
            keys.extend(jwks_keys(path, json)?);
        }
        if keys.is_empty() {
            return Err(KeyError::NoKey);
        }
        let families: HashSet<Family> = keys.iter().map(|k| k.family).collect();
        let allowed = allowed_algorithms(&src.algorithms, &families)?;
        Ok(Verifier {
            keys,
            allowed,
            kid_required,
            audience: src.audience.clone(),
            issuer: src.issuer.clone(),
            leeway: src.leeway,
        })
    }

    /// The leeway on `exp`, for the connection's expiry.
    pub fn leeway(&self) -> Duration {
        self.leeway
    }

    /// Verify `token` now.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let (alg, kid) = header(token)?;
        if !self.allowed.contains(&alg) {
            return Err(AuthError::AlgorithmNotAllowed);
        }
        let fam = family(alg);
        let candidates: Vec<&Key> = match &kid {
            Some(kid) if self.keys.iter().any(|k| k.kid.as_deref() == Some(kid)) => self
                .keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid.as_str()))
                .collect(),
            Some(_) if self.kid_required => return Err(AuthError::UnknownKid),
            None if self.kid_required => return Err(AuthError::UnknownKid),
            _ => self.keys.iter().filter(|k| k.kid.is_none()).collect(),
        };
        let candidates: Vec<&Key> = candidates.into_iter().filter(|k| k.family == fam).collect();
        if candidates.is_empty() {
            return Err(if kid.is_some() {
                AuthError::UnknownKid
            } else {
                AuthError::BadSignature
            });
        }
        let validation = self.validation(alg);
        let mut last = AuthError::BadSignature;
        for k in candidates {
            match jsonwebtoken::decode::<Claims>(token, &k.key, &validation) {
                Ok(data) => return identity(data.claims),
                Err(e) => {
                    last = map_error(e.kind());
                    if last != AuthError::BadSignature {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = self.leeway.as_secs();
        v.validate_nbf = true;
        // A configured audience or issuer must be present, not only match when present.
        let mut required = vec!["exp", "sub"];
        match &self.audience {
            Some(a) => {
                v.set_audience(&[a]);
                required.push("aud");
            }
            None => v.validate_aud = false,
        }
        if let Some(i) = &self.issuer {
            v.set_issuer(&[i]);
            required.push("iss");
        }
        v.set_required_spec_claims(&required);
        v
    }
}

/// The token's header: `alg` (any name, so that `none` is refused as not allowed) and `kid`.
fn header(token: &str) -> Result<(Algorithm, Option<String>), AuthError> {
    let mut parts = token.split('.');
    let (Some(h), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(h.trim_end_matches('='))
        .map_err(|_| AuthError::Malformed)?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)?;
    let alg = v
        .get("alg")
        .and_then(|a| a.as_str())
        .ok_or(AuthError::Malformed)?;
    let alg = parse_algorithm(alg).ok_or(AuthError::AlgorithmNotAllowed)?;
    let kid = v.get("kid").and_then(|k| k.as_str()).map(str::to_string);
    Ok((alg, kid))
}

fn map_error(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::MissingRequiredClaim(c) => match c.as_str() {
            "aud" => AuthError::WrongAudience,
            "iss" => AuthError::WrongIssuer,
            "sub" => AuthError::MissingClaim("sub"),
            _ => AuthError::MissingClaim("exp"),
        },
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            AuthError::AlgorithmNotAllowed
        }
        ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_)
        | ErrorKind::InvalidToken
        | ErrorKind::InvalidClaimFormat(_) => AuthError::Malformed,
        _ => AuthError::BadSignature,
    }
}

/// Claims → identity: `sub` non-empty, `info` bounded, `{sub}` expanded in the patterns.
fn identity(c: Claims) -> Result<Identity, AuthError> {
    let sub = c
        .sub
        .filter(|s| !s.is_empty())
        .ok_or(AuthError::MissingClaim("sub"))?;
    let exp = c.exp.ok_or(AuthError::MissingClaim("exp"))?;
    let info = match c.info {
        Some(v) => {
            if serde_json::to_string(&v).map_or(usize::MAX, |t| t.len()) > MAX_INFO_BYTES {
                return Err(AuthError::InfoTooLarge);
            }
            data_from_json(v)
        }
        None => Data::Null,
    };
    let grants = c.rooms.map(|r| {
        let r = r.unwrap_or_default();
        let compile = |list: &[String]| -> Vec<Pattern> {
            list.iter().map(|p| Pattern::for_subject(p, &sub)).collect()
        };
        let subscribe = compile(&r.subscribe);
        Grants {
            presence: r
                .presence
                .as_deref()
                .map_or_else(|| subscribe.clone(), compile),
            publish: compile(&r.publish),
            subscribe,
        }
    });
    Ok(Identity {
        sub: Arc::from(sub),
        exp,
        info: Arc::new(info),
        grants,
        api: c.api.unwrap_or(false),
    })
}

fn pem_key(path: &str, pem: &str) -> Result<Key, KeyError> {
    // Public keys only: a private key here would verify nothing and should not be on a gateway.
    let label_ok = pem.lines().any(|l| {
        let l = l.trim();
        l.starts_with("-----BEGIN ") && (l.contains("PUBLIC KEY") || l.contains("CERTIFICATE"))
    });
    if !label_ok || pem.contains("PRIVATE KEY") {
        return Err(KeyError::Pem {
            path: path.to_string(),
        });
    }
    let b = pem.as_bytes();
    let (family, key) = if let Ok(k) = DecodingKey::from_rsa_pem(b) {
        (Family::Rsa, k)
    } else if let Ok(k) = DecodingKey::from_ec_pem(b) {
        (Family::Ec, k)
    } else if let Ok(k) = DecodingKey::from_ed_pem(b) {
        (Family::Ed, k)
    } else {
        return Err(KeyError::Pem {
            path: path.to_string(),
        });
    };
    Ok(Key {
        family,
        kid: None,
        key,
    })
}

fn jwks_keys(path: &str, json: &str) -> Result<Vec<Key>, KeyError> {
    let err = |reason: String| KeyError::Jwks {
        path: path.to_string(),
        reason,
    };
    let set: JwkSet = serde_json::from_str(json).map_err(|e| err(format!("not a JWKS: {e}")))?;
    if set.keys.is_empty() {
        return Err(err("no keys".into()));
    }
    set.keys
        .iter()
        .map(|jwk| {
            let kid = jwk
                .common
                .key_id
                .clone()
                .ok_or_else(|| err("a key without kid".into()))?;
            let key = DecodingKey::from_jwk(jwk).map_err(|e| err(format!("key {kid}: {e}")))?;
            let family = match &jwk.algorithm {
                jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Family::Rsa,
                jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Family::Ec,
                jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(_) => Family::Ed,
                jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_) => Family::Hmac,
            };
            Ok(Key {
                family,
                kid: Some(kid),
                key,
            })
        })
        .collect()
}

fn allowed_algorithms(
    names: &[String],
    families: &HashSet<Family>,
) -> Result<HashSet<Algorithm>, KeyError> {
    if names.is_empty() {
        return Ok(families
            .iter()
            .flat_map(|f| algorithms_of(*f).iter().copied())
            .collect());
    }
    names
        .iter()
        .map(|n| {
            if n.eq_ignore_ascii_case("none") {
                return Err(KeyError::Algorithms("\"none\" is never allowed".into()));
            }
            let a = parse_algorithm(n)
                .ok_or_else(|| KeyError::Algorithms(format!("`{n}` is not a JWT algorithm")))?;
            if !families.contains(&family(a)) {
                return Err(KeyError::Algorithms(format!(
                    "`{n}`: no configured key can verify it"
                )));
            }
            Ok(a)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    fn hs() -> Verifier {
        Verifier::new(&KeySource {
            hs256_secret: Some(b"k".to_vec()),
            ..KeySource::default()
        })
        .unwrap()
    }

    fn sign(claims: serde_json::Value) -> String {
        encode(&Header::default(), &claims, &EncodingKey::from_secret(b"k")).unwrap()
    }

    #[test]
    fn rooms_claim_absent_null_and_lists() {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        let exp = now.map_or(0, |d| d.as_secs()) + 60;
        let v = hs();
        let absent = v
            .verify(&sign(serde_json::json!({"sub": "a", "exp": exp})))
            .unwrap();
        assert_eq!(absent.grants, None, "absent: the room classes decide");
        let null = v
            .verify(&sign(
                serde_json::json!({"sub": "a", "exp": exp, "rooms": null}),
            ))
            .unwrap();
        assert_eq!(null.grants, Some(Grants::default()), "null grants nothing");
        let some = v
            .verify(&sign(
                serde_json::json!({"sub": "a", "exp": exp, "rooms": {"subscribe": ["x:*"]}}),
            ))
            .unwrap();
        let g = some.grants.unwrap();
        assert!(g.subscribe[0].matches("x:1") && g.publish.is_empty());
        assert_eq!(g.presence, g.subscribe, "presence defaults to subscribe");
    }

    #[test]
    fn only_public_keys_are_accepted() {
        for pem in [
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
            "not a pem",
        ] {
            let src = KeySource {
                public_keys: vec![("k.pem".into(), pem.into())],
                ..KeySource::default()
            };
            assert!(
                matches!(Verifier::new(&src), Err(KeyError::Pem { .. })),
                "{pem}"
            );
        }
    }

    #[test]
    fn algorithms_follow_the_keys() {
        let src = KeySource {
            hs256_secret: Some(b"k".to_vec()),
            algorithms: vec!["none".into()],
            ..KeySource::default()
        };
        assert!(matches!(Verifier::new(&src), Err(KeyError::Algorithms(_))));
        let src = KeySource {
            hs256_secret: Some(b"k".to_vec()),
            algorithms: vec!["ES256".into()],
            ..KeySource::default()
        };
        assert!(matches!(Verifier::new(&src), Err(KeyError::Algorithms(_))));
        assert!(matches!(
            Verifier::new(&KeySource::default()),
            Err(KeyError::NoKey)
        ));
    }
}
