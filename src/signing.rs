//! Ed25519 keys and signatures over cache claims, in Nix's text forms: a secret key is
//! `name:base64(seed ‖ public)`, a public key `name:base64(public)`, a signature
//! `name:base64(signature)`. The name says which key signed, so several keys can be
//! trusted at once and rotated.
//!
//! What is signed is a [`Claim`]'s fingerprint: "build key K produced entry D (name, size,
//! references)". A signature is thus valid for one key only: a validly signed entry cannot
//! be served as the output of another build.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;

/// The fingerprint format's version; part of what is signed.
const CLAIM_VERSION: &str = "dockerbuild-claim-v1";

/// What a cache says about one of its entries: build key `key` produced the entry `digest`.
/// For a source, the key is the source's own digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claim {
    pub key: Digest,
    pub digest: Digest,
    /// The entry's name (part of its address) and kind.
    pub name: String,
    pub kind: crate::store::Kind,
    /// Bytes of the entry's contents.
    pub size: u64,
    /// The entries it was made from, sorted.
    pub references: Vec<Digest>,
    /// Signatures over [`Claim::fingerprint`] (`name:base64`).
    #[serde(default)]
    pub signatures: Vec<String>,
}

impl Claim {
    /// The bytes signed: every field but the signatures, one per line.
    pub fn fingerprint(&self) -> Vec<u8> {
        let mut refs: Vec<String> = self.references.iter().map(|d| d.to_string()).collect();
        refs.sort();
        format!(
            "{CLAIM_VERSION}\nkey={}\ndigest={}\nname={}\nkind={}\nsize={}\nreferences={}\n",
            self.key,
            self.digest,
            self.name,
            self.kind.as_str(),
            self.size,
            refs.join(",")
        )
        .into_bytes()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{what} `{text}` is not `name:base64`{hint}")]
    Malformed {
        what: &'static str,
        text: String,
        hint: &'static str,
    },
    #[error("key name `{name}` must be 1-100 characters of A-Z a-z 0-9 . _ -")]
    BadName { name: String },
    #[error("cannot generate a key: the system has no randomness ({0})")]
    Random(String),
}

fn split<'a>(
    what: &'static str,
    text: &'a str,
    len: usize,
) -> Result<(&'a str, Vec<u8>), KeyError> {
    let malformed = || KeyError::Malformed {
        what,
        text: if what == "secret key" {
            "<redacted>".to_owned()
        } else {
            text.to_owned()
        },
        hint: if what == "secret key" {
            "\nhint: make one with `dockerbuild key generate NAME`"
        } else {
            ""
        },
    };
    let (name, b64) = text.trim().split_once(':').ok_or_else(malformed)?;
    let bytes = B64.decode(b64).map_err(|_| malformed())?;
    if bytes.len() != len || name.is_empty() {
        return Err(malformed());
    }
    Ok((name, bytes))
}

fn check_name(name: &str) -> Result<(), KeyError> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(KeyError::BadName {
            name: name.to_owned(),
        })
    }
}

/// A key that signs claims.
pub struct SecretKey {
    pub name: String,
    key: SigningKey,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({})", self.name)
    }
}

impl SecretKey {
    /// The key whose seed is `seed` (for test vectors; use [`SecretKey::generate`]).
    pub fn from_seed(name: &str, seed: [u8; 32]) -> Result<SecretKey, KeyError> {
        check_name(name)?;
        Ok(SecretKey {
            name: name.to_owned(),
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// A new random key named `name`.
    pub fn generate(name: &str) -> Result<SecretKey, KeyError> {
        check_name(name)?;
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(SecretKey {
            name: name.to_owned(),
            key: SigningKey::from_bytes(&seed),
        })
    }

    pub fn parse(text: &str) -> Result<SecretKey, KeyError> {
        let (name, bytes) = split("secret key", text, 64)?;
        check_name(name)?;
        let seed: [u8; 32] = bytes[..32].try_into().expect("64 bytes");
        let key = SigningKey::from_bytes(&seed);
        if key.verifying_key().as_bytes() != &bytes[32..] {
            return Err(KeyError::Malformed {
                what: "secret key",
                text: "<redacted>".to_owned(),
                hint: "\nhint: its public half does not match its seed",
            });
        }
        Ok(SecretKey {
            name: name.to_owned(),
            key,
        })
    }

    /// `name:base64(seed ‖ public)`.
    pub fn to_text(&self) -> String {
        let mut bytes = self.key.to_bytes().to_vec();
        bytes.extend_from_slice(self.key.verifying_key().as_bytes());
        format!("{}:{}", self.name, B64.encode(bytes))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// Signs the claim, replacing any signature of a key with the same name.
    pub fn sign(&self, claim: &mut Claim) {
        let sig = self.key.sign(&claim.fingerprint());
        let prefix = format!("{}:", self.name);
        claim.signatures.retain(|s| !s.starts_with(&prefix));
        claim
            .signatures
            .push(format!("{}:{}", self.name, B64.encode(sig.to_bytes())));
    }
}

/// A key whose signatures are trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub name: String,
    key: VerifyingKey,
}

impl PublicKey {
    pub fn parse(text: &str) -> Result<PublicKey, KeyError> {
        let (name, bytes) = split("public key", text, 32)?;
        check_name(name)?;
        let arr: [u8; 32] = bytes.try_into().expect("32 bytes");
        let key = VerifyingKey::from_bytes(&arr).map_err(|_| KeyError::Malformed {
            what: "public key",
            text: text.to_owned(),
            hint: "\nhint: it is not a valid ed25519 point",
        })?;
        Ok(PublicKey {
            name: name.to_owned(),
            key,
        })
    }

    /// `name:base64(public)`.
    pub fn to_text(&self) -> String {
        format!("{}:{}", self.name, B64.encode(self.key.as_bytes()))
    }

    /// Whether one of the claim's signatures is this key's and valid.
    pub fn verifies(&self, claim: &Claim) -> bool {
        let prefix = format!("{}:", self.name);
        let fp = claim.fingerprint();
        claim.signatures.iter().any(|s| {
            s.strip_prefix(&prefix)
                .and_then(|b64| B64.decode(b64).ok())
                .and_then(|b| <[u8; 64]>::try_from(b.as_slice()).ok())
                .is_some_and(|b| {
                    self.key
                        .verify(&fp, &ed25519_dalek::Signature::from_bytes(&b))
                        .is_ok()
                })
        })
    }
}

/// Whether `claim` is acceptable: with no trusted keys, every claim is (integrity is still
/// checked by re-hashing); otherwise one trusted key must have signed it.
pub fn trusted(claim: &Claim, keys: &[PublicKey]) -> bool {
    keys.is_empty() || keys.iter().any(|k| k.verifies(claim))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim() -> Claim {
        Claim {
            key: Digest::of(b"key"),
            digest: Digest::of(b"entry"),
            name: "git-linux-arm64".into(),
            kind: crate::store::Kind::Output,
            size: 1234,
            references: vec![Digest::of(b"a"), Digest::of(b"b")],
            signatures: vec![],
        }
    }

    #[test]
    fn keys_round_trip_and_sign() {
        let sk = SecretKey::generate("ci-1").unwrap();
        let again = SecretKey::parse(&sk.to_text()).unwrap();
        assert_eq!(again.public(), sk.public());
        let pk = PublicKey::parse(&sk.public().to_text()).unwrap();
        let mut c = claim();
        assert!(!pk.verifies(&c), "unsigned");
        sk.sign(&mut c);
        assert!(pk.verifies(&c));
        assert!(trusted(&c, std::slice::from_ref(&pk)));
        assert!(trusted(&c, &[]), "no trusted keys: integrity only");

        // A signature is for one claim: another key, digest or size breaks it.
        for edit in [
            (|c: &mut Claim| c.key = Digest::of(b"other key")) as fn(&mut Claim),
            |c| c.digest = Digest::of(b"other"),
            |c| c.size += 1,
            |c| c.references.pop().map(drop).unwrap_or(()),
            |c| c.name.push('x'),
        ] {
            let mut forged = c.clone();
            edit(&mut forged);
            assert!(!pk.verifies(&forged), "{forged:?}");
        }
        // Another key of the same name does not verify it.
        let other = SecretKey::generate("ci-1").unwrap().public();
        assert!(!other.verifies(&c));
        assert!(!trusted(&c, &[other]));
        // Signing again with the same key replaces, not adds.
        sk.sign(&mut c);
        assert_eq!(c.signatures.len(), 1);
    }

    #[test]
    fn malformed_keys_name_the_problem() {
        let e = PublicKey::parse("nocolon").unwrap_err().to_string();
        assert!(e.contains("name:base64"), "{e}");
        let e = SecretKey::parse("k:AAAA").unwrap_err().to_string();
        assert!(
            e.contains("dockerbuild key generate") && !e.contains("AAAA"),
            "{e}"
        );
        let e = SecretKey::generate("bad name").unwrap_err().to_string();
        assert!(e.contains("bad name"), "{e}");
    }
}
