//! Room names: 1–128 bytes of `[A-Za-z0-9_.:-]`, as a check ([`valid_room_name`]) and as a
//! validated type ([`RoomName`]).

use std::fmt;
use std::ops::Deref;

/// Is `name` a valid room name: 1–128 bytes of `[A-Za-z0-9_.:-]`?
pub fn valid_room_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// A name that failed [`valid_room_name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid room name: 1-128 bytes of [A-Za-z0-9_.:-]")]
pub struct RoomNameError;

/// A valid room name (see [`valid_room_name`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RoomName(String);

impl RoomName {
    /// Validate `name` and take a copy of it.
    pub fn parse(name: &str) -> Result<RoomName, RoomNameError> {
        if valid_room_name(name) {
            Ok(RoomName(name.to_owned()))
        } else {
            Err(RoomNameError)
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as a `String`.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl Deref for RoomName {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for RoomName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_room_name("lobby"));
        assert!(valid_room_name("a.b:c-d_9"));
        assert!(valid_room_name(&"x".repeat(128)));
        assert!(!valid_room_name(""));
        assert!(!valid_room_name(&"x".repeat(129)));
        assert!(!valid_room_name("a/b"));
        assert!(!valid_room_name("a b"));
        assert!(!valid_room_name("é"));
    }

    #[test]
    fn room_name_type() {
        for ok in ["lobby", "a.b:c-d_9", &"x".repeat(128)] {
            let name = RoomName::parse(ok).unwrap();
            assert_eq!(name.as_str(), ok);
            assert_eq!(&*name, ok);
            assert_eq!(name.len(), ok.len()); // through Deref<Target = str>
            assert_eq!(name.to_string(), ok);
            assert_eq!(name.clone().into_string(), ok);
        }
        for bad in ["", &"x".repeat(129), "a/b", "a b", "é"] {
            assert_eq!(RoomName::parse(bad), Err(RoomNameError));
        }
        assert_eq!(
            RoomNameError.to_string(),
            "invalid room name: 1-128 bytes of [A-Za-z0-9_.:-]"
        );
    }
}
