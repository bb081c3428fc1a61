//! Who vouches for a realisation: ed25519 keys named as Nix names its keys
//! (`name:base64`), the message a signature covers, and the verdict a reader
//! gives a record under its `trusted-keys`.

use crate::digest::Digest;
use crate::local::Output;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("a key is written `name:base64`, and this has no `:`")]
    NoName,
    #[error("the key `{0}` is not 32 bytes of base64")]
    NotAKey(String),
    #[error("a key's name is letters, digits and `.-_`: `{0}` is not")]
    BadName(String),
    #[error("cannot read randomness for a new key: {0}")]
    Random(String),
}

fn split(text: &str) -> Result<(String, [u8; 32]), KeyError> {
    let (name, b64) = text.trim().split_once(':').ok_or(KeyError::NoName)?;
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return Err(KeyError::BadName(name.to_string()));
    }
    let bytes = STANDARD
        .decode(b64)
        .map_err(|_| KeyError::NotAKey(name.to_string()))?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| KeyError::NotAKey(name.to_string()))?;
    Ok((name.to_string(), bytes))
}

/// A writer's key: it signs the records it pushes.
#[derive(Clone)]
pub struct SecretKey {
    pub name: String,
    key: SigningKey,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({})", self.name)
    }
}

/// A key readers trust.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub name: String,
    key: VerifyingKey,
}

impl SecretKey {
    /// A new key named `name`, from the system's randomness.
    pub fn generate(name: &str) -> Result<SecretKey, KeyError> {
        let mut seed = [0u8; 32];
        use std::io::Read as _;
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut seed))
            .map_err(|e| KeyError::Random(e.to_string()))?;
        let text = format!("{name}:{}", STANDARD.encode(seed));
        SecretKey::parse(&text)
    }

    pub fn parse(text: &str) -> Result<SecretKey, KeyError> {
        let (name, seed) = split(text)?;
        Ok(SecretKey {
            name,
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// `name:base64` of the secret: what `cache keygen` writes to the secret file.
    pub fn to_text(&self) -> String {
        format!("{}:{}", self.name, STANDARD.encode(self.key.to_bytes()))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// The base64 signature of a realisation by this key.
    pub fn sign(&self, key: &Digest, outputs: &[Output]) -> String {
        STANDARD.encode(self.key.sign(&message(key, outputs)).to_bytes())
    }
}

impl PublicKey {
    pub fn parse(text: &str) -> Result<PublicKey, KeyError> {
        let (name, bytes) = split(text)?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::NotAKey(name.clone()))?;
        Ok(PublicKey { name, key })
    }

    pub fn to_text(&self) -> String {
        format!("{}:{}", self.name, STANDARD.encode(self.key.to_bytes()))
    }

    fn verifies(&self, key: &Digest, outputs: &[Output], signature: &str) -> bool {
        let Ok(bytes) = STANDARD.decode(signature) else {
            return false;
        };
        let Ok(sig) = ed25519_dalek::Signature::from_slice(&bytes) else {
            return false;
        };
        self.key.verify(&message(key, outputs), &sig).is_ok()
    }
}

/// What a signature covers: the derivation key and every output's name,
/// digest and kind, in name order, under a versioned header.
pub fn message(key: &Digest, outputs: &[Output]) -> Vec<u8> {
    let mut sorted: Vec<&Output> = outputs.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut m = format!("mustbuild realisation v1\n{}\n", key.to_hex());
    for o in sorted {
        m.push_str(&format!(
            "{}\t{}\t{}\n",
            o.name,
            o.digest.to_hex(),
            o.kind.as_str()
        ));
    }
    m.into_bytes()
}

/// A reader's verdict on a record's signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Signed by this trusted key.
    Trusted(String),
    Unsigned,
    /// A trusted key's name, with a signature that does not verify.
    BadSignature(String),
    /// Signed only by keys not trusted here.
    Untrusted(Vec<String>),
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Trusted(k) => write!(f, "signed by `{k}`, trusted"),
            Verdict::Unsigned => write!(f, "unsigned"),
            Verdict::BadSignature(k) => write!(f, "its signature by `{k}` does not verify"),
            Verdict::Untrusted(keys) => {
                let keys: Vec<String> = keys.iter().map(|k| format!("`{k}`")).collect();
                write!(
                    f,
                    "signed by {}, which trusted-keys does not list",
                    keys.join(", ")
                )
            }
        }
    }
}

/// The verdict on `signatures` (key name, base64 signature) of a realisation.
pub fn judge(
    key: &Digest,
    outputs: &[Output],
    signatures: &[(String, String)],
    trusted: &[PublicKey],
) -> Verdict {
    if signatures.is_empty() {
        return Verdict::Unsigned;
    }
    let mut bad = None;
    for (name, sig) in signatures {
        if let Some(k) = trusted.iter().find(|k| &k.name == name) {
            if k.verifies(key, outputs, sig) {
                return Verdict::Trusted(name.clone());
            }
            bad = Some(name.clone());
        }
    }
    match bad {
        Some(name) => Verdict::BadSignature(name),
        None => Verdict::Untrusted(signatures.iter().map(|(n, _)| n.clone()).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::OutputKind;

    fn outputs() -> Vec<Output> {
        vec![Output {
            name: "o".into(),
            digest: Digest::of(b"x"),
            kind: OutputKind::File,
        }]
    }

    #[test]
    fn a_signature_verifies_only_under_its_key_and_for_its_record() {
        let secret = SecretKey::generate("lab-1").unwrap();
        let public = secret.public();
        let again = PublicKey::parse(&public.to_text()).unwrap();
        assert_eq!(again, public);
        assert_eq!(
            SecretKey::parse(&secret.to_text()).unwrap().public(),
            public
        );
        let key = Digest::of(b"key");
        let sig = secret.sign(&key, &outputs());
        let signed = [("lab-1".to_string(), sig.clone())];
        assert_eq!(
            judge(&key, &outputs(), &signed, std::slice::from_ref(&public)),
            Verdict::Trusted("lab-1".into())
        );
        // Another output digest: the same signature no longer holds.
        let mut other = outputs();
        other[0].digest = Digest::of(b"y");
        assert_eq!(
            judge(&key, &other, &signed, std::slice::from_ref(&public)),
            Verdict::BadSignature("lab-1".into())
        );
        assert_eq!(
            judge(&key, &outputs(), &[], std::slice::from_ref(&public)),
            Verdict::Unsigned
        );
        let stranger = SecretKey::generate("elsewhere").unwrap();
        let theirs = [("elsewhere".to_string(), stranger.sign(&key, &outputs()))];
        assert_eq!(
            judge(&key, &outputs(), &theirs, &[public]),
            Verdict::Untrusted(vec!["elsewhere".into()])
        );
    }

    #[test]
    fn keys_are_read_with_clear_errors() {
        assert_eq!(PublicKey::parse("nocolon").unwrap_err(), KeyError::NoName);
        assert_eq!(
            PublicKey::parse("a b:AAAA").unwrap_err(),
            KeyError::BadName("a b".into())
        );
        assert_eq!(
            PublicKey::parse("k:AAAA").unwrap_err(),
            KeyError::NotAKey("k".into())
        );
    }
}
