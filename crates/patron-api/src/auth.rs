//! Bearer-key authentication. Config holds only SHA-256 hashes of keys; a request's key is
//! hashed and compared. Roles nest: admin ⊃ marketing ⊃ reader; ingest stands apart.

use std::sync::{Arc, RwLock};

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use patron_core::config::{ApiKeyConfig, Role};
use sha2::{Digest, Sha256};

use crate::ApiError;

#[derive(Debug, Clone)]
struct Key {
    hash: [u8; 32],
    role: Role,
}

#[derive(Debug, Clone)]
pub struct Auth {
    keys: Vec<Key>,
    /// `--insecure-no-auth`: every request is admin.
    open: bool,
    verified: Verified,
}

/// Keys already found valid, so a client does not pay for SHA-256 on every request. Only a key
/// that matched a configured hash gets in, so there is at most one entry per configured key.
/// Its `Debug` shows only the count: keys are never logged.
#[derive(Clone, Default)]
struct Verified(Arc<RwLock<Vec<VerifiedKey>>>);

/// A presented key, byte for byte, with the role its configured hash grants.
type VerifiedKey = (Box<[u8]>, Role);

impl std::fmt::Debug for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.read().map_or(0, |v| v.len());
        write!(f, "Verified({n} keys)")
    }
}

impl Verified {
    fn get(&self, presented: &[u8]) -> Option<Role> {
        let keys = self.0.read().unwrap_or_else(|e| e.into_inner());
        keys.iter()
            .find(|(k, _)| k.len() == presented.len() && slices_eq(k, presented))
            .map(|(_, role)| *role)
    }

    fn insert(&self, presented: &[u8], role: Role, limit: usize) {
        let mut keys = self.0.write().unwrap_or_else(|e| e.into_inner());
        if keys.len() < limit && !keys.iter().any(|(k, _)| k.as_ref() == presented) {
            keys.push((presented.into(), role));
        }
    }
}

/// Whether a key with role `has` may do what `needs` allows.
pub fn grants(has: Role, needs: Role) -> bool {
    let rank = |r: Role| match r {
        Role::Reader => Some(1),
        Role::Marketing => Some(2),
        Role::Admin => Some(3),
        Role::Ingest => None,
    };
    match (rank(has), rank(needs)) {
        (Some(h), Some(n)) => h >= n,
        // Ingest is its own role: an ingest key reads nothing, and only it may ingest.
        _ => has == needs,
    }
}

pub fn sha256_hex(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

impl Auth {
    /// Keys from `[[api.keys]]`; a hash that is not 64 hex digits is a config error naming the
    /// key.
    pub fn from_config(keys: &[ApiKeyConfig]) -> Result<Self, String> {
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            let bytes = hex::decode(k.sha256.trim()).ok();
            let hash: [u8; 32] = bytes.and_then(|b| b.try_into().ok()).ok_or_else(|| {
                format!(
                    "[[api.keys]] `{}`: sha256 must be 64 hex digits (the SHA-256 of the key)",
                    k.name
                )
            })?;
            out.push(Key { hash, role: k.role });
        }
        Ok(Self {
            keys: out,
            open: false,
            verified: Verified::default(),
        })
    }

    /// No keys at all: every request passes (only for loopback, see `serve`).
    pub fn open() -> Self {
        Self {
            keys: Vec::new(),
            open: true,
            verified: Verified::default(),
        }
    }

    pub fn is_open(&self) -> bool {
        self.open
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// The role of the request's bearer key: 401 when missing or unknown.
    pub fn role(&self, headers: &HeaderMap) -> Result<Role, ApiError> {
        if self.open {
            return Ok(Role::Admin);
        }
        let presented = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(ApiError::unauthorized)?;
        if let Some(role) = self.verified.get(presented.as_bytes()) {
            return Ok(role);
        }
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let role = self
            .keys
            .iter()
            .find(|k| constant_time_eq(&k.hash, &digest))
            .map(|k| k.role)
            .ok_or_else(ApiError::unauthorized)?;
        self.verified
            .insert(presented.as_bytes(), role, self.keys.len());
        Ok(role)
    }

    /// 401 without a valid key, 403 when its role falls short of `needs`.
    pub fn require(&self, headers: &HeaderMap, needs: Role) -> Result<Role, ApiError> {
        if self.open {
            // `--insecure-no-auth`: every route, ingest included.
            return Ok(needs);
        }
        let has = self.role(headers)?;
        if grants(has, needs) {
            Ok(has)
        } else {
            Err(ApiError::forbidden(role_name(needs)))
        }
    }
}

pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Reader => "reader",
        Role::Marketing => "marketing",
        Role::Admin => "admin",
        Role::Ingest => "ingest",
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    slices_eq(a, b)
}

/// Equal-length slices compared in time independent of where they differ.
fn slices_eq(a: &[u8], b: &[u8]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(key: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, format!("Bearer {key}").parse().unwrap());
        h
    }

    fn auth() -> Auth {
        Auth::from_config(&[
            ApiKeyConfig {
                name: "dash".into(),
                role: Role::Reader,
                sha256: "3ebac7c8d6c3e1ac7f2c3bd4ad8b8d0b2b8a6c1bb6ae0b4e1d8e0e4a0e0b1c2d".into(),
            },
            ApiKeyConfig {
                name: "ops".into(),
                role: Role::Admin,
                sha256: sha256_hex("admin-secret"),
            },
        ])
        .unwrap()
    }

    #[test]
    fn sha256_matches_a_published_vector() {
        // FIPS 180-2 test vector for "abc".
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn missing_or_unknown_key_is_401_and_weak_role_is_403() {
        let a = auth();
        assert_eq!(a.role(&HeaderMap::new()).unwrap_err().status, 401);
        assert_eq!(a.role(&headers("nope")).unwrap_err().status, 401);
        assert_eq!(
            a.require(&headers("admin-secret"), Role::Reader).unwrap(),
            Role::Admin
        );
        assert!(grants(Role::Admin, Role::Marketing));
        assert!(!grants(Role::Reader, Role::Marketing));
        assert!(!grants(Role::Ingest, Role::Reader));
        assert!(!grants(Role::Marketing, Role::Ingest));
        assert!(grants(Role::Ingest, Role::Ingest));
    }

    #[test]
    fn remembered_keys_still_match_exactly_and_are_never_shown() {
        let a = auth();
        for _ in 0..3 {
            assert_eq!(a.role(&headers("admin-secret")).unwrap(), Role::Admin);
        }
        // Near misses of a remembered key are still unknown.
        for wrong in [
            "admin-secreT",
            "admin-secre",
            "admin-secrett",
            "xdmin-secret",
        ] {
            assert_eq!(a.role(&headers(wrong)).unwrap_err().status, 401, "{wrong}");
        }
        let shown = format!("{a:?}");
        assert!(!shown.contains("admin-secret"), "{shown}");
        assert!(shown.contains("Verified(1 keys)"), "{shown}");
    }

    #[test]
    fn a_bad_hash_names_the_key() {
        let err = Auth::from_config(&[ApiKeyConfig {
            name: "broken".into(),
            role: Role::Reader,
            sha256: "xyz".into(),
        }])
        .unwrap_err();
        assert!(err.contains("broken"), "{err}");
    }
}
