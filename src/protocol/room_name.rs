//! Room names (placeholder until the protocol split lands).

/// Is `name` a valid room name: 1–128 bytes of `[A-Za-z0-9_.:-]`?
pub fn valid_room_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}
