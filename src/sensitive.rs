//! Types for secret material: zeroized on drop, `Debug` prints `[redacted]`, and getting at the
//! bytes is an explicit `expose()` call.
use std::collections::BTreeMap;
use std::fmt;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Secret bytes (a field value, a key). Compared in constant time.
#[derive(Clone, Default, Zeroize, ZeroizeOnDrop)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    /// Takes ownership of `bytes`; they are zeroized when this value drops.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// The secret bytes. Every call site is a place a secret leaves its wrapper.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes (not secret).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl PartialEq for SecretBytes {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for SecretBytes {}

/// The named fields of one secret version. `Debug` shows field names, never values.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretFields(BTreeMap<String, SecretBytes>);

impl SecretFields {
    /// An empty field map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a field.
    pub fn insert(&mut self, name: String, value: SecretBytes) {
        self.0.insert(name, value);
    }

    /// A field's value.
    pub fn get(&self, name: &str) -> Option<&SecretBytes> {
        self.0.get(name)
    }

    /// Fields in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &SecretBytes)> {
        self.0.iter()
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are no fields.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Consumes the map into its entries.
    pub fn into_entries(self) -> BTreeMap<String, SecretBytes> {
        self.0
    }
}

impl FromIterator<(String, SecretBytes)> for SecretFields {
    fn from_iter<T: IntoIterator<Item = (String, SecretBytes)>>(iter: T) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl fmt::Debug for SecretFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for k in self.0.keys() {
            m.entry(k, &"[redacted]");
        }
        m.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_the_value() {
        let marker = "hunter2-marker-value";
        let b = SecretBytes::new(marker.as_bytes().to_vec());
        assert_eq!(format!("{b:?}"), "[redacted]");
        let f: SecretFields = [("password".to_string(), b)].into_iter().collect();
        let shown = format!("{f:?} {f:#?}");
        assert!(!shown.contains(marker), "{shown}");
        assert!(shown.contains("password"));
    }

    #[test]
    fn equality_is_by_content() {
        assert_eq!(
            SecretBytes::new(b"a".to_vec()),
            SecretBytes::new(b"a".to_vec())
        );
        assert_ne!(
            SecretBytes::new(b"a".to_vec()),
            SecretBytes::new(b"b".to_vec())
        );
        assert_ne!(
            SecretBytes::new(b"a".to_vec()),
            SecretBytes::new(b"ab".to_vec())
        );
    }
}
