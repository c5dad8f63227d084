//! Value generators: random passwords with class rules, random bytes, Ed25519 key pairs. All
//! randomness comes from aws-lc-rs's CSPRNG; values are returned in secret types.
use crate::sensitive::SecretBytes;
use base64::Engine;

/// Character classes a password can be required to contain.
pub const CLASSES: &[(&str, &str)] = &[
    ("lower", "abcdefghijklmnopqrstuvwxyz"),
    ("upper", "ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
    ("digit", "0123456789"),
    ("symbol", "-_.~!@#%^*+=:,"),
];

/// Password rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordRules {
    /// Length in characters.
    pub length: usize,
    /// Classes that must each appear at least once.
    pub required: Vec<String>,
    /// The characters to draw from.
    pub alphabet: Vec<char>,
}

/// Why password rules are refused (at config load or in `SetRotationPolicy`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RulesError {
    /// Outside 8..=1024.
    #[error("password length must be 8 to 1024")]
    Length,
    /// A class name keygate does not know.
    #[error("unknown character class {0:?} (lower, upper, digit, symbol)")]
    UnknownClass(String),
    /// Too few usable characters.
    #[error("the alphabet needs at least 10 printable, non-space characters")]
    Alphabet,
    /// A required class with no character in the alphabet.
    #[error("the alphabet has no character of required class {0:?}")]
    ClassMissing(String),
    /// More required classes than characters.
    #[error("the length is shorter than the number of required classes")]
    TooShort,
    /// An encoding keygate does not know.
    #[error("encoding {0:?}: use hex, base64 or base64url")]
    Encoding(String),
}

/// Why a value could not be generated. Never holds any of it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GenerateError {
    /// The system random source failed.
    #[error("the system random source failed")]
    Random,
    /// The alphabet is larger than a u32 index.
    #[error("alphabet too large")]
    AlphabetTooLarge,
    /// 10,000 draws met no password with every required class.
    #[error("could not meet the password rules")]
    Unsatisfiable,
    /// The key generator failed.
    #[error("key generation failed")]
    Key,
}

impl PasswordRules {
    /// Checks the rules make sense: the alphabet holds a character of every required class and
    /// the length fits all of them.
    pub fn new(
        length: usize,
        required: Vec<String>,
        alphabet: Option<&str>,
    ) -> Result<Self, RulesError> {
        if !(8..=1024).contains(&length) {
            return Err(RulesError::Length);
        }
        for r in &required {
            if !CLASSES.iter().any(|(n, _)| n == r) {
                return Err(RulesError::UnknownClass(r.chars().take(50).collect()));
            }
        }
        let alphabet: Vec<char> = match alphabet {
            Some(a) => {
                let mut v: Vec<char> = a.chars().collect();
                v.sort_unstable();
                v.dedup();
                v
            }
            None => CLASSES
                .iter()
                .filter(|(n, _)| *n != "symbol" || required.iter().any(|r| r == "symbol"))
                .flat_map(|(_, c)| c.chars())
                .collect(),
        };
        if alphabet.len() < 10 || alphabet.iter().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(RulesError::Alphabet);
        }
        for r in &required {
            let class = class_chars(r);
            if !alphabet.iter().any(|c| class.contains(*c)) {
                return Err(RulesError::ClassMissing(r.clone()));
            }
        }
        if required.len() > length {
            return Err(RulesError::TooShort);
        }
        Ok(Self {
            length,
            required,
            alphabet,
        })
    }

    /// Letters and digits only: safe inside any quoting.
    pub fn alphanumeric(length: usize) -> Self {
        Self {
            length,
            required: vec!["lower".into(), "upper".into(), "digit".into()],
            alphabet: CLASSES[..3].iter().flat_map(|(_, c)| c.chars()).collect(),
        }
    }
}

fn class_chars(name: &str) -> &'static str {
    CLASSES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, c)| *c)
        .unwrap_or("")
}

/// A uniformly random index below `n` (rejection sampling, no modulo bias).
fn below(n: usize) -> Result<usize, GenerateError> {
    let n32 = u32::try_from(n).map_err(|_| GenerateError::AlphabetTooLarge)?;
    let zone = u32::MAX - (u32::MAX % n32);
    loop {
        let mut b = [0u8; 4];
        aws_lc_rs::rand::fill(&mut b).map_err(|_| GenerateError::Random)?;
        let v = u32::from_le_bytes(b);
        if v < zone {
            return Ok((v % n32) as usize);
        }
    }
}

/// A password following `rules`: every required class appears (redrawn until it does, which
/// keeps the distribution uniform over valid passwords).
pub fn password(rules: &PasswordRules) -> Result<SecretBytes, GenerateError> {
    for _ in 0..10_000 {
        let mut s = String::with_capacity(rules.length);
        for _ in 0..rules.length {
            s.push(rules.alphabet[below(rules.alphabet.len())?]);
        }
        let ok = rules
            .required
            .iter()
            .all(|r| s.chars().any(|c| class_chars(r).contains(c)));
        let out = SecretBytes::new(s.into_bytes());
        if ok {
            return Ok(out);
        }
    }
    Err(GenerateError::Unsatisfiable)
}

/// Encodings for random bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Lower-case hex.
    Hex,
    /// Standard base64 with padding.
    Base64,
    /// URL-safe base64 without padding.
    Base64Url,
}

impl Encoding {
    /// From its config name.
    pub fn parse(s: &str) -> Result<Self, RulesError> {
        match s {
            "hex" => Ok(Self::Hex),
            "base64" => Ok(Self::Base64),
            "base64url" => Ok(Self::Base64Url),
            _ => Err(RulesError::Encoding(s.chars().take(50).collect())),
        }
    }
}

/// `n` random bytes, encoded.
pub fn random_bytes(n: usize, enc: Encoding) -> Result<SecretBytes, GenerateError> {
    let mut raw = zeroize::Zeroizing::new(vec![0u8; n]);
    aws_lc_rs::rand::fill(&mut raw).map_err(|_| GenerateError::Random)?;
    let s = match enc {
        Encoding::Hex => hex::encode(&*raw),
        Encoding::Base64 => base64::engine::general_purpose::STANDARD.encode(&*raw),
        Encoding::Base64Url => base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&*raw),
    };
    Ok(SecretBytes::new(s.into_bytes()))
}

/// A new Ed25519 key pair as PEM: (PKCS#8 private key, SubjectPublicKeyInfo public key).
pub fn ed25519_pem() -> Result<(SecretBytes, String), GenerateError> {
    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
    let doc = Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new())
        .map_err(|_| GenerateError::Key)?;
    let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref()).map_err(|_| GenerateError::Key)?;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let wrap = |label: &str, der: &[u8]| {
        let body = b64(der);
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap_or(""))
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
    };
    // SubjectPublicKeyInfo for Ed25519: fixed 12-byte prefix + 32-byte key (RFC 8410)
    let mut spki = vec![
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    spki.extend_from_slice(pair.public_key().as_ref());
    let private = wrap("PRIVATE KEY", doc.as_ref());
    Ok((
        SecretBytes::new(private.into_bytes()),
        wrap("PUBLIC KEY", &spki),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_follow_their_rules() {
        let rules = PasswordRules::new(
            12,
            vec![
                "lower".into(),
                "upper".into(),
                "digit".into(),
                "symbol".into(),
            ],
            None,
        )
        .unwrap();
        for _ in 0..200 {
            let p = password(&rules).unwrap();
            let s = std::str::from_utf8(p.expose()).unwrap();
            assert_eq!(s.chars().count(), 12);
            for (_, class) in CLASSES {
                assert!(s.chars().any(|c| class.contains(c)), "{s} misses a class");
            }
            assert!(s.chars().all(|c| rules.alphabet.contains(&c)));
        }
        let only = PasswordRules::new(16, vec!["digit".into()], Some("0123456789abcdef")).unwrap();
        let p = password(&only).unwrap();
        assert!(p.expose().iter().all(|b| b"0123456789abcdef".contains(b)));
        assert!(PasswordRules::new(16, vec!["upper".into()], Some("0123456789abcdef")).is_err());
        assert!(PasswordRules::new(4, vec![], None).is_err());
        assert!(PasswordRules::new(16, vec!["emoji".into()], None).is_err());
    }

    #[test]
    fn random_bytes_and_keys() {
        assert_eq!(random_bytes(32, Encoding::Hex).unwrap().len(), 64);
        assert_ne!(
            random_bytes(16, Encoding::Hex).unwrap(),
            random_bytes(16, Encoding::Hex).unwrap()
        );
        let (private, public) = ed25519_pem().unwrap();
        let key = jsonwebtoken::EncodingKey::from_ed_pem(private.expose()).unwrap();
        let dec = jsonwebtoken::DecodingKey::from_ed_pem(public.as_bytes()).unwrap();
        let tok = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA),
            &serde_json::json!({"sub": "x", "exp": 4_000_000_000u64}),
            &key,
        )
        .unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
        v.required_spec_claims.clear();
        jsonwebtoken::decode::<serde_json::Value>(&tok, &dec, &v).unwrap();
    }
}
