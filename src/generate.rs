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

impl PasswordRules {
    /// Checks the rules make sense: the alphabet holds a character of every required class and
    /// the length fits all of them.
    pub fn new(
        length: usize,
        required: Vec<String>,
        alphabet: Option<&str>,
    ) -> Result<Self, String> {
        if !(8..=1024).contains(&length) {
            return Err("password length must be 8 to 1024".into());
        }
        for r in &required {
            if !CLASSES.iter().any(|(n, _)| n == r) {
                return Err(format!(
                    "unknown character class {r:?} (lower, upper, digit, symbol)"
                ));
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
            return Err("the alphabet needs at least 10 printable, non-space characters".into());
        }
        for r in &required {
            let class = class_chars(r);
            if !alphabet.iter().any(|c| class.contains(*c)) {
                return Err(format!(
                    "the alphabet has no character of required class {r:?}"
                ));
            }
        }
        if required.len() > length {
            return Err("the length is shorter than the number of required classes".into());
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
fn below(n: usize) -> Result<usize, String> {
    let n32 = u32::try_from(n).map_err(|_| "alphabet too large".to_string())?;
    let zone = u32::MAX - (u32::MAX % n32);
    loop {
        let mut b = [0u8; 4];
        aws_lc_rs::rand::fill(&mut b).map_err(|_| "random generator failed".to_string())?;
        let v = u32::from_le_bytes(b);
        if v < zone {
            return Ok((v % n32) as usize);
        }
    }
}

/// A password following `rules`: every required class appears (redrawn until it does, which
/// keeps the distribution uniform over valid passwords).
pub fn password(rules: &PasswordRules) -> Result<SecretBytes, String> {
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
    Err("could not meet the password rules".into())
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
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "hex" => Ok(Self::Hex),
            "base64" => Ok(Self::Base64),
            "base64url" => Ok(Self::Base64Url),
            _ => Err(format!("encoding {s:?}: use hex, base64 or base64url")),
        }
    }
}

/// `n` random bytes, encoded.
pub fn random_bytes(n: usize, enc: Encoding) -> Result<SecretBytes, String> {
    let mut raw = zeroize::Zeroizing::new(vec![0u8; n]);
    aws_lc_rs::rand::fill(&mut raw).map_err(|_| "random generator failed".to_string())?;
    let s = match enc {
        Encoding::Hex => hex::encode(&*raw),
        Encoding::Base64 => base64::engine::general_purpose::STANDARD.encode(&*raw),
        Encoding::Base64Url => base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&*raw),
    };
    Ok(SecretBytes::new(s.into_bytes()))
}

/// A new Ed25519 key pair as PEM: (PKCS#8 private key, SubjectPublicKeyInfo public key).
pub fn ed25519_pem() -> Result<(SecretBytes, String), String> {
    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
    let doc = Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new())
        .map_err(|_| "key generation failed".to_string())?;
    let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref())
        .map_err(|_| "key generation failed".to_string())?;
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
