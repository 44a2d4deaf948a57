//! Authentication and authorization, as pure decisions: a token ([`token`]) becomes an
//! [`Identity`] with its grants; room patterns ([`pattern`]) and room classes decide what a
//! connection may do in a room ([`may`]); browser origins are checked against an allowlist
//! ([`origin`]). The gate applies them before the upgrade, sessions on each request.

pub mod origin;
pub mod pattern;
pub mod token;

pub use token::{AuthError, Grants, Identity, Verifier};

use pattern::Pattern;

/// What a request wants to do in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Join the room (raw upgrade, envelope `subscribe`).
    Subscribe,
    /// Send to the room.
    Publish,
    /// Read the room's presence list.
    Presence,
    /// Read the room's history.
    History,
}

impl Action {
    /// The verb, as error reasons say it.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Subscribe => "subscribe",
            Action::Publish => "publish",
            Action::Presence => "presence",
            Action::History => "history",
        }
    }
}

/// A room class's rights (`[[rooms.class]]`): what connections without a `rooms` claim may do,
/// and whether presence exists in the room at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassRights {
    /// Subscribe, presence and history without a `rooms` claim.
    pub anonymous_subscribe: bool,
    /// Publish without a `rooms` claim.
    pub anonymous_publish: bool,
    /// `presence` requests and join/leave events.
    pub presence: bool,
}

impl Default for ClassRights {
    fn default() -> Self {
        ClassRights {
            anonymous_subscribe: true,
            anonymous_publish: true,
            presence: true,
        }
    }
}

/// May a connection (anonymous, or with `identity`) do `action` in `room` of class `class`?
pub fn may(identity: Option<&Identity>, class: &ClassRights, action: Action, room: &str) -> bool {
    if action == Action::Presence && !class.presence {
        return false;
    }
    let Some(grants) = identity.and_then(|i| i.grants.as_ref()) else {
        return match action {
            Action::Publish => class.anonymous_publish,
            _ => class.anonymous_subscribe,
        };
    };
    let list: &[Pattern] = match action {
        Action::Subscribe | Action::History => &grants.subscribe,
        Action::Publish => &grants.publish,
        Action::Presence => &grants.presence,
    };
    list.iter().any(|p| p.matches(room))
}

/// Compare secrets without an early exit on the first differing byte.
pub fn same_key(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn ident(sub: &str, grants: Option<(&[&str], &[&str], &[&str])>) -> Identity {
        let compile = |l: &[&str]| l.iter().map(|p| Pattern::for_subject(p, sub)).collect();
        Identity {
            sub: Arc::from(sub),
            exp: 0,
            info: Arc::new(crate::protocol::envelope::Data::Null),
            grants: grants.map(|(s, p, pr)| Grants {
                subscribe: compile(s),
                publish: compile(p),
                presence: compile(pr),
            }),
            api: false,
        }
    }

    #[test]
    fn permission_matrix() {
        let open = ClassRights::default();
        let ada = ident(
            "ada",
            Some((&["chat:*", "user:{sub}"], &["chat:*"], &["chat:*"])),
        );
        use Action::*;
        assert!(may(Some(&ada), &open, Subscribe, "chat:1"));
        assert!(may(Some(&ada), &open, History, "chat:1"));
        assert!(may(Some(&ada), &open, Publish, "chat:1"));
        assert!(may(Some(&ada), &open, Presence, "chat:1"));
        assert!(may(Some(&ada), &open, Subscribe, "user:ada"));
        assert!(!may(Some(&ada), &open, Subscribe, "user:bob"));
        assert!(!may(Some(&ada), &open, Publish, "user:ada"));
        assert!(!may(Some(&ada), &open, Presence, "user:ada"));
        assert!(!may(Some(&ada), &open, Subscribe, "news:1"));
        // Class rights decide for anonymous connections and tokens without `rooms`.
        let readonly = ClassRights {
            anonymous_publish: false,
            ..ClassRights::default()
        };
        let bob = ident("bob", None);
        for who in [None, Some(&bob)] {
            assert!(may(who, &readonly, Subscribe, "news:1"));
            assert!(may(who, &readonly, History, "news:1"));
            assert!(!may(who, &readonly, Publish, "news:1"));
            assert!(may(who, &open, Publish, "news:1"));
        }
        let closed = ClassRights {
            anonymous_subscribe: false,
            anonymous_publish: false,
            presence: true,
        };
        assert!(!may(None, &closed, Subscribe, "x"));
        assert!(!may(None, &closed, Presence, "x"));
        // No presence in the class: refused even with a grant.
        let quiet = ClassRights {
            presence: false,
            ..ClassRights::default()
        };
        assert!(!may(Some(&ada), &quiet, Presence, "chat:1"));
        assert!(may(Some(&ada), &quiet, Subscribe, "chat:1"));
    }
}
