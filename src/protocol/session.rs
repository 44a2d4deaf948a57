//! The envelope protocol's refusals of well-formed requests: what the daemon answers with an
//! `error` frame (the connection stays open). Each has a stable `code` (the frame's `code`
//! field, also a metric label) and a one-line reason; see docs/protocol.md, "Errors".

use super::envelope::EnvelopeError;

/// Why a session refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The frame did not decode as a request (the decoder's own code).
    #[error("{0}")]
    Invalid(EnvelopeError),
    /// `subscribe` to a room the connection is in, or whose subscription is in flight.
    #[error("already subscribed to this room")]
    AlreadySubscribed,
    /// `unsubscribe` from a room the connection is not in.
    #[error("not subscribed to this room")]
    NotSubscribed,
    /// `subscribe` over `limits.max_rooms_per_connection`.
    #[error("too many rooms on this connection")]
    TooManyRooms,
    /// `subscribe` to a room at its class's `max_subscribers`.
    #[error("room is full")]
    RoomFull,
    /// The connection's token (or the room's class) does not allow this action in this room;
    /// the field is the verb (`subscribe`, `publish`, `presence`, `history`).
    #[error("not allowed to {0} in this room")]
    Forbidden(&'static str),
    /// A `refresh` was refused: why (`token expired`, `token is for another user`, ...).
    #[error("{0}")]
    BadRefresh(String),
}

impl SessionError {
    /// The `code` field of the `error` frame.
    pub fn code(&self) -> &'static str {
        match self {
            SessionError::Invalid(e) => e.code(),
            SessionError::AlreadySubscribed => "already_subscribed",
            SessionError::NotSubscribed => "not_subscribed",
            SessionError::TooManyRooms => "too_many_rooms",
            SessionError::RoomFull => "room_full",
            SessionError::Forbidden(_) => "forbidden",
            SessionError::BadRefresh(_) => "bad_refresh",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable() {
        assert_eq!(SessionError::AlreadySubscribed.code(), "already_subscribed");
        assert_eq!(SessionError::NotSubscribed.code(), "not_subscribed");
        assert_eq!(SessionError::TooManyRooms.code(), "too_many_rooms");
        assert_eq!(SessionError::RoomFull.code(), "room_full");
        assert_eq!(
            SessionError::TooManyRooms.to_string(),
            "too many rooms on this connection"
        );
        let f = SessionError::Forbidden("publish");
        assert_eq!(
            (f.code(), f.to_string().as_str()),
            ("forbidden", "not allowed to publish in this room")
        );
        assert_eq!(SessionError::BadRefresh("x".into()).code(), "bad_refresh");
    }
}
