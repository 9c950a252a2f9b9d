//! Validation of POSIX shared-memory names (shm_overview(7)): one optional leading `/`,
//! then 1..=255 bytes with no `/` and no NUL, and not `.` or `..`.

use super::error::NameError;

/// Longest name `/dev/shm` accepts (NAME_MAX).
pub const MAX_NAME_LEN: usize = 255;

/// A validated POSIX shm name; [`ShmName::as_str`] includes the leading `/`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ShmName(String);

impl ShmName {
    /// Validates `name`; `"demo"` and `"/demo"` name the same object.
    pub fn new(name: &str) -> Result<Self, NameError> {
        let bare = name.strip_prefix('/').unwrap_or(name);
        if bare.is_empty() {
            return Err(NameError::Empty);
        }
        if bare.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong { len: bare.len(), max: MAX_NAME_LEN });
        }
        if bare.contains('\0') {
            return Err(NameError::ContainsNul);
        }
        if bare.contains('/') {
            return Err(NameError::ContainsSlash(name.to_string()));
        }
        if bare == "." || bare == ".." {
            return Err(NameError::Reserved(name.to_string()));
        }
        Ok(Self(format!("/{bare}")))
    }

    /// The name with its leading `/`, as `shm_open` takes it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name without the leading `/`, as it appears in `/dev/shm`.
    pub fn bare(&self) -> &str {
        &self.0[1..]
    }
}

impl core::fmt::Display for ShmName {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_normalises() {
        assert_eq!(ShmName::new("demo").unwrap().as_str(), "/demo");
        assert_eq!(ShmName::new("/demo").unwrap().bare(), "demo");
        assert!(ShmName::new(&"x".repeat(MAX_NAME_LEN)).is_ok());
    }

    #[test]
    fn rejects_each_bad_name() {
        assert_eq!(ShmName::new(""), Err(NameError::Empty));
        assert_eq!(ShmName::new("/"), Err(NameError::Empty));
        assert_eq!(
            ShmName::new(&"x".repeat(MAX_NAME_LEN + 1)),
            Err(NameError::TooLong { len: MAX_NAME_LEN + 1, max: MAX_NAME_LEN })
        );
        assert!(matches!(ShmName::new("a/b"), Err(NameError::ContainsSlash(_))));
        assert!(matches!(ShmName::new("//a"), Err(NameError::ContainsSlash(_))));
        assert_eq!(ShmName::new("a\0b"), Err(NameError::ContainsNul));
        assert!(matches!(ShmName::new(".."), Err(NameError::Reserved(_))));
    }
}
