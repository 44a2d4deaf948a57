//! CBOR encoding (RFC 8949): server and client frames written straight into a `Vec<u8>` in
//! shortest form (`"op"` first), payload data through ciborium.

use super::{ClientOp, Data, EncodeError, ServerOp, RATE_LIMITED_REASON};

const CBOR_UINT: u8 = 0;
const CBOR_TEXT: u8 = 3;
const CBOR_ARRAY: u8 = 4;
const CBOR_MAP: u8 = 5;
const CBOR_FALSE: u8 = 0xf4;
const CBOR_TRUE: u8 = 0xf5;
const CBOR_NULL: u8 = 0xf6;

pub(super) fn cbor_server(op: &ServerOp<'_>, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let name = op.name();
    match *op {
        ServerOp::Welcome { conn, user, exp } => {
            cbor_open(out, name, 2 + pairs(&user) + pairs(&exp));
            cbor_entry_u64(out, "conn", conn);
            cbor_opt_entry_text(out, "user", user);
            if let Some(exp) = exp {
                cbor_entry_u64(out, "exp", exp);
            }
        }
        ServerOp::Subscribed {
            room,
            seq,
            epoch,
            recovered,
            id,
        } => {
            cbor_subscribed(out, name, (room, seq, epoch, recovered), pairs(&id));
            cbor_opt_entry_data(out, "id", id)?;
        }
        ServerOp::Unsubscribed { room, reason, id } => {
            cbor_open(out, name, 2 + pairs(&reason) + pairs(&id));
            cbor_entry_text(out, "room", room);
            cbor_opt_entry_text(out, "reason", reason);
            cbor_opt_entry_data(out, "id", id)?;
        }
        ServerOp::Message {
            room,
            seq,
            from,
            data,
        } => cbor_message(out, name, room, seq, from, data)?,
        ServerOp::Join {
            room,
            conn,
            user,
            info,
        }
        | ServerOp::Leave {
            room,
            conn,
            user,
            info,
        } => cbor_join_leave(out, name, room, conn, user, info)?,
        ServerOp::Presence { room, members, id } => {
            cbor_presence(out, (name, pairs(&id)), room, members)?;
            cbor_opt_entry_data(out, "id", id)?;
        }
        ServerOp::PresenceByUser { room, users, id } => {
            cbor_presence_by_user(out, (name, pairs(&id)), room, users)?;
            cbor_opt_entry_data(out, "id", id)?;
        }
        ServerOp::History {
            room,
            epoch,
            messages,
            complete,
            id,
        } => {
            cbor_history(out, (name, pairs(&id)), room, epoch, messages, complete)?;
            cbor_opt_entry_data(out, "id", id)?;
        }
        ServerOp::Ack { id, seq } => {
            cbor_open(out, name, 3);
            cbor_text(out, "id");
            cbor_data(out, id)?;
            cbor_entry_u64(out, "seq", seq);
        }
        ServerOp::Refreshed { exp, id } => {
            cbor_open(out, name, 2 + pairs(&id));
            cbor_entry_u64(out, "exp", exp);
            cbor_opt_entry_data(out, "id", id)?;
        }
        ServerOp::Error { code, reason, id } => cbor_error(out, name, code, reason, id)?,
        ServerOp::Reconnect { after_ms } => {
            cbor_open(out, name, 2);
            cbor_entry_u64(out, "after_ms", after_ms);
        }
        ServerOp::RateLimited { retry_after_ms, id } => {
            cbor_open(out, name, 4 + pairs(&id));
            cbor_entry_text(out, "code", "rate_limited");
            cbor_entry_text(out, "reason", RATE_LIMITED_REASON);
            cbor_entry_u64(out, "retry_after_ms", retry_after_ms);
            cbor_opt_entry_data(out, "id", id)?;
        }
    }
    Ok(())
}

/// A `subscribed` map; `name` is its op.
fn cbor_subscribed(
    out: &mut Vec<u8>,
    name: &str,
    (room, seq, epoch, recovered): (&str, u64, u64, bool),
    extra: u64,
) {
    cbor_open(out, name, 5 + extra);
    cbor_entry_text(out, "room", room);
    cbor_entry_u64(out, "seq", seq);
    cbor_entry_u64(out, "epoch", epoch);
    cbor_text(out, "recovered");
    cbor_bool(out, recovered);
}

/// A `message` map; `name` is its op.
fn cbor_message(
    out: &mut Vec<u8>,
    name: &str,
    room: &str,
    seq: u64,
    from: Option<u64>,
    data: &Data,
) -> Result<(), EncodeError> {
    cbor_open(out, name, 5);
    cbor_entry_text(out, "room", room);
    cbor_entry_u64(out, "seq", seq);
    cbor_text(out, "from");
    cbor_opt_u64(out, from);
    cbor_text(out, "data");
    cbor_data(out, data)
}

/// A `join` or `leave` map; `name` is its op.
fn cbor_join_leave(
    out: &mut Vec<u8>,
    name: &str,
    room: &str,
    conn: u64,
    user: Option<&str>,
    info: &Data,
) -> Result<(), EncodeError> {
    cbor_open(out, name, 4 + pairs(&user));
    cbor_entry_text(out, "room", room);
    cbor_entry_u64(out, "conn", conn);
    cbor_opt_entry_text(out, "user", user);
    cbor_text(out, "info");
    cbor_data(out, info)
}

/// A `presence` map; `name` is its op.
fn cbor_presence(
    out: &mut Vec<u8>,
    (name, extra): (&str, u64),
    room: &str,
    members: &[(u64, Option<&str>, Data)],
) -> Result<(), EncodeError> {
    cbor_open(out, name, 3 + extra);
    cbor_entry_text(out, "room", room);
    cbor_text(out, "members");
    cbor_head(out, CBOR_ARRAY, members.len() as u64);
    for (conn, user, info) in members {
        cbor_head(out, CBOR_MAP, 2 + pairs(user));
        cbor_entry_u64(out, "conn", *conn);
        cbor_opt_entry_text(out, "user", *user);
        cbor_text(out, "info");
        cbor_data(out, info)?;
    }
    Ok(())
}

/// A `presence` map with `"by":"user"`; `name` is its op.
fn cbor_presence_by_user(
    out: &mut Vec<u8>,
    (name, extra): (&str, u64),
    room: &str,
    users: &[(Option<&str>, u32, Data)],
) -> Result<(), EncodeError> {
    cbor_open(out, name, 4 + extra);
    cbor_entry_text(out, "room", room);
    cbor_entry_text(out, "by", "user");
    cbor_text(out, "members");
    cbor_head(out, CBOR_ARRAY, users.len() as u64);
    for (user, connections, info) in users {
        cbor_head(out, CBOR_MAP, 3);
        cbor_text(out, "user");
        match user {
            Some(user) => cbor_text(out, user),
            None => out.push(CBOR_NULL),
        }
        cbor_entry_u64(out, "connections", u64::from(*connections));
        cbor_text(out, "info");
        cbor_data(out, info)?;
    }
    Ok(())
}

/// A `history` map; `name` is its op.
fn cbor_history(
    out: &mut Vec<u8>,
    (name, extra): (&str, u64),
    room: &str,
    epoch: u64,
    messages: &[(u64, Option<u64>, Data)],
    complete: bool,
) -> Result<(), EncodeError> {
    cbor_open(out, name, 5 + extra);
    cbor_entry_text(out, "room", room);
    cbor_entry_u64(out, "epoch", epoch);
    cbor_text(out, "messages");
    cbor_head(out, CBOR_ARRAY, messages.len() as u64);
    for (seq, from, data) in messages {
        cbor_head(out, CBOR_MAP, 3);
        cbor_entry_u64(out, "seq", *seq);
        cbor_text(out, "from");
        cbor_opt_u64(out, *from);
        cbor_text(out, "data");
        cbor_data(out, data)?;
    }
    cbor_text(out, "complete");
    cbor_bool(out, complete);
    Ok(())
}

/// An `error` map; `name` is its op.
fn cbor_error(
    out: &mut Vec<u8>,
    name: &str,
    code: &str,
    reason: &str,
    id: Option<&Data>,
) -> Result<(), EncodeError> {
    cbor_open(out, name, 3 + pairs(&id));
    cbor_entry_text(out, "code", code);
    cbor_entry_text(out, "reason", reason);
    cbor_opt_entry_data(out, "id", id)
}

pub(super) fn cbor_client(op: &ClientOp, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    match op {
        ClientOp::Subscribe {
            room,
            since,
            epoch,
            presence,
        } => {
            let n =
                2 + u64::from(since.is_some()) + u64::from(epoch.is_some()) + u64::from(*presence);
            cbor_open(out, op.name(), n);
            cbor_entry_text(out, "room", room);
            if let Some(since) = since {
                cbor_entry_u64(out, "since", *since);
            }
            if let Some(epoch) = epoch {
                cbor_entry_u64(out, "epoch", *epoch);
            }
            if *presence {
                cbor_text(out, "presence");
                cbor_bool(out, true);
            }
        }
        ClientOp::Unsubscribe { room } => {
            cbor_open(out, op.name(), 2);
            cbor_entry_text(out, "room", room);
        }
        ClientOp::Presence { room, by_user } => {
            cbor_open(out, op.name(), 2 + u64::from(*by_user));
            cbor_entry_text(out, "room", room);
            if *by_user {
                cbor_entry_text(out, "by", "user");
            }
        }
        ClientOp::Refresh { token } => {
            cbor_open(out, op.name(), 2);
            cbor_entry_text(out, "token", token);
        }
        ClientOp::Publish { room, data, id } => {
            cbor_open(out, op.name(), 3 + u64::from(id.is_some()));
            cbor_entry_text(out, "room", room);
            cbor_text(out, "data");
            cbor_data(out, data)?;
            if let Some(id) = id {
                cbor_text(out, "id");
                cbor_data(out, id)?;
            }
        }
        ClientOp::History { room, since, limit } => {
            cbor_open(
                out,
                op.name(),
                2 + u64::from(since.is_some()) + u64::from(limit.is_some()),
            );
            cbor_entry_text(out, "room", room);
            if let Some(since) = since {
                cbor_entry_u64(out, "since", *since);
            }
            if let Some(limit) = limit {
                cbor_entry_u64(out, "limit", u64::from(*limit));
            }
        }
    }
    Ok(())
}

/// An item head (RFC 8949 §3): major type and argument, in the shortest form.
fn cbor_head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    if n < 24 {
        out.push(m | n as u8);
    } else if let Ok(n) = u8::try_from(n) {
        out.extend_from_slice(&[m | 24, n]);
    } else if let Ok(n) = u16::try_from(n) {
        out.push(m | 25);
        out.extend_from_slice(&n.to_be_bytes());
    } else if let Ok(n) = u32::try_from(n) {
        out.push(m | 26);
        out.extend_from_slice(&n.to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

/// A map of `pairs` entries whose first entry is `"op": NAME`.
fn cbor_open(out: &mut Vec<u8>, op: &str, pairs: u64) {
    cbor_head(out, CBOR_MAP, pairs);
    cbor_text(out, "op");
    cbor_text(out, op);
}

pub(super) fn cbor_text(out: &mut Vec<u8>, s: &str) {
    cbor_head(out, CBOR_TEXT, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn cbor_u64(out: &mut Vec<u8>, n: u64) {
    cbor_head(out, CBOR_UINT, n);
}

fn cbor_opt_u64(out: &mut Vec<u8>, n: Option<u64>) {
    match n {
        Some(n) => cbor_u64(out, n),
        None => out.push(CBOR_NULL),
    }
}

fn cbor_bool(out: &mut Vec<u8>, b: bool) {
    out.push(if b { CBOR_TRUE } else { CBOR_FALSE });
}

fn cbor_entry_text(out: &mut Vec<u8>, key: &str, value: &str) {
    cbor_text(out, key);
    cbor_text(out, value);
}

fn cbor_entry_u64(out: &mut Vec<u8>, key: &str, value: u64) {
    cbor_text(out, key);
    cbor_u64(out, value);
}

/// `KEY: VALUE` when there is a value, nothing otherwise.
fn cbor_opt_entry_text(out: &mut Vec<u8>, key: &str, value: Option<&str>) {
    if let Some(value) = value {
        cbor_entry_text(out, key, value);
    }
}

/// `KEY: DATA` when there is a value, nothing otherwise.
fn cbor_opt_entry_data(
    out: &mut Vec<u8>,
    key: &str,
    value: Option<&Data>,
) -> Result<(), EncodeError> {
    if let Some(value) = value {
        cbor_text(out, key);
        cbor_data(out, value)?;
    }
    Ok(())
}

/// How many map entries an optional key adds: 1 when present.
fn pairs<T>(value: &Option<T>) -> u64 {
    u64::from(value.is_some())
}

fn cbor_data(out: &mut Vec<u8>, data: &Data) -> Result<(), EncodeError> {
    match data {
        Data::Text(t) => cbor_text(out, t),
        Data::Bytes(b) => {
            cbor_head(out, 2, b.len() as u64);
            out.extend_from_slice(b);
        }
        other => ciborium::ser::into_writer(other, &mut *out)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{cbor_bytes, cbor_value, int, map, text};
    use super::super::{encode_server, Format};
    use super::*;

    #[test]
    fn server_ops_cbor() {
        let data = map(&[("text", text("hi"))]);
        let info = map(&[("name", text("ada"))]);
        let members = [(12, None, info.clone()), (15, None, Data::Null)];
        let bytes = Data::Bytes(vec![0, 1, 2]);
        let messages = [(21, Some(12), data.clone()), (22, None, bytes.clone())];
        let id = text("m-1");
        let cases: Vec<(ServerOp<'_>, Data)> = vec![
            (
                ServerOp::Welcome {
                    conn: 12,
                    user: None,
                    exp: None,
                },
                map(&[("op", text("welcome")), ("conn", int(12))]),
            ),
            (
                ServerOp::Subscribed {
                    room: "chat:42",
                    seq: 20,
                    epoch: u64::MAX,
                    recovered: false,
                    id: None,
                },
                map(&[
                    ("op", text("subscribed")),
                    ("room", text("chat:42")),
                    ("seq", int(20)),
                    ("epoch", int(u64::MAX.into())),
                    ("recovered", Data::Bool(false)),
                ]),
            ),
            (
                ServerOp::Message {
                    room: "chat:42",
                    seq: 21,
                    from: Some(12),
                    data: &data,
                },
                map(&[
                    ("op", text("message")),
                    ("room", text("chat:42")),
                    ("seq", int(21)),
                    ("from", int(12)),
                    ("data", data.clone()),
                ]),
            ),
            (
                ServerOp::Message {
                    room: "chat:42",
                    seq: 300,
                    from: None,
                    data: &bytes,
                },
                map(&[
                    ("op", text("message")),
                    ("room", text("chat:42")),
                    ("seq", int(300)),
                    ("from", Data::Null),
                    ("data", bytes.clone()),
                ]),
            ),
            (
                ServerOp::Join {
                    room: "r",
                    conn: 70000,
                    user: None,
                    info: &info,
                },
                map(&[
                    ("op", text("join")),
                    ("room", text("r")),
                    ("conn", int(70000)),
                    ("info", info.clone()),
                ]),
            ),
            (
                ServerOp::Leave {
                    room: "r",
                    conn: 1 << 40,
                    user: None,
                    info: &Data::Null,
                },
                map(&[
                    ("op", text("leave")),
                    ("room", text("r")),
                    ("conn", int(1 << 40)),
                    ("info", Data::Null),
                ]),
            ),
            (
                ServerOp::Presence {
                    room: "r",
                    members: &members,
                    id: None,
                },
                map(&[
                    ("op", text("presence")),
                    ("room", text("r")),
                    (
                        "members",
                        Data::Array(vec![
                            map(&[("conn", int(12)), ("info", info.clone())]),
                            map(&[("conn", int(15)), ("info", Data::Null)]),
                        ]),
                    ),
                ]),
            ),
            (
                ServerOp::History {
                    room: "r",
                    epoch: 3,
                    messages: &messages,
                    complete: true,
                    id: None,
                },
                map(&[
                    ("op", text("history")),
                    ("room", text("r")),
                    ("epoch", int(3)),
                    (
                        "messages",
                        Data::Array(vec![
                            map(&[("seq", int(21)), ("from", int(12)), ("data", data.clone())]),
                            map(&[
                                ("seq", int(22)),
                                ("from", Data::Null),
                                ("data", bytes.clone()),
                            ]),
                        ]),
                    ),
                    ("complete", Data::Bool(true)),
                ]),
            ),
            (
                ServerOp::Ack { id: &id, seq: 21 },
                map(&[("op", text("ack")), ("id", id.clone()), ("seq", int(21))]),
            ),
            (
                ServerOp::Error {
                    code: "bad_field",
                    reason: "x",
                    id: Some(&bytes),
                },
                map(&[
                    ("op", text("error")),
                    ("code", text("bad_field")),
                    ("reason", text("x")),
                    ("id", bytes.clone()),
                ]),
            ),
            (
                ServerOp::Error {
                    code: "bad_frame",
                    reason: "frame is not a map",
                    id: None,
                },
                map(&[
                    ("op", text("error")),
                    ("code", text("bad_frame")),
                    ("reason", text("frame is not a map")),
                ]),
            ),
        ];
        check_against_ciborium(cases);
    }

    /// Each frame decodes (ciborium, key order included, `"op"` first) to the expected map, and
    /// is byte-identical to ciborium's own (shortest-form) encoding of that map.
    fn check_against_ciborium(cases: Vec<(ServerOp<'_>, Data)>) {
        for (op, expected) in cases {
            let got = encode_server(&op, Format::Cbor);
            assert_eq!(cbor_value(&got), expected, "{op:?}");
            assert_eq!(got, cbor_bytes(&expected), "{op:?}");
        }
    }

    #[test]
    fn auth_fields_cbor() {
        let info = map(&[("name", text("ada"))]);
        let bytes = Data::Bytes(vec![0, 1, 2]);
        let id = int(8);
        let long_user = "u".repeat(300);
        let members = [
            (12, Some("ada"), info.clone()),
            (15, None, Data::Null),
            (16, Some(long_user.as_str()), bytes.clone()),
        ];
        let users = [
            (Some("ada"), 2, info.clone()),
            (None, 1, Data::Null),
            (Some("bob"), u32::MAX, bytes.clone()),
        ];
        let cases: Vec<(ServerOp<'_>, Data)> = vec![
            (
                ServerOp::Welcome {
                    conn: 12,
                    user: Some("ada"),
                    exp: Some(1_767_225_600),
                },
                map(&[
                    ("op", text("welcome")),
                    ("conn", int(12)),
                    ("user", text("ada")),
                    ("exp", int(1_767_225_600)),
                ]),
            ),
            (
                ServerOp::Welcome {
                    conn: 12,
                    user: Some("ada"),
                    exp: None,
                },
                map(&[
                    ("op", text("welcome")),
                    ("conn", int(12)),
                    ("user", text("ada")),
                ]),
            ),
            (
                ServerOp::Welcome {
                    conn: 12,
                    user: None,
                    exp: Some(u64::MAX),
                },
                map(&[
                    ("op", text("welcome")),
                    ("conn", int(12)),
                    ("exp", int(u64::MAX.into())),
                ]),
            ),
            (
                ServerOp::Unsubscribed {
                    room: "r",
                    reason: None,
                    id: None,
                },
                map(&[("op", text("unsubscribed")), ("room", text("r"))]),
            ),
            (
                ServerOp::Unsubscribed {
                    room: "r",
                    reason: Some("forbidden"),
                    id: None,
                },
                map(&[
                    ("op", text("unsubscribed")),
                    ("room", text("r")),
                    ("reason", text("forbidden")),
                ]),
            ),
            (
                ServerOp::Join {
                    room: "r",
                    conn: 15,
                    user: Some("ada"),
                    info: &info,
                },
                map(&[
                    ("op", text("join")),
                    ("room", text("r")),
                    ("conn", int(15)),
                    ("user", text("ada")),
                    ("info", info.clone()),
                ]),
            ),
            (
                ServerOp::Leave {
                    room: "r",
                    conn: 15,
                    user: Some(&long_user),
                    info: &bytes,
                },
                map(&[
                    ("op", text("leave")),
                    ("room", text("r")),
                    ("conn", int(15)),
                    ("user", text(&long_user)),
                    ("info", bytes.clone()),
                ]),
            ),
            (
                ServerOp::Presence {
                    room: "r",
                    members: &members,
                    id: None,
                },
                map(&[
                    ("op", text("presence")),
                    ("room", text("r")),
                    (
                        "members",
                        Data::Array(vec![
                            map(&[
                                ("conn", int(12)),
                                ("user", text("ada")),
                                ("info", info.clone()),
                            ]),
                            map(&[("conn", int(15)), ("info", Data::Null)]),
                            map(&[
                                ("conn", int(16)),
                                ("user", text(&long_user)),
                                ("info", bytes.clone()),
                            ]),
                        ]),
                    ),
                ]),
            ),
            (
                ServerOp::PresenceByUser {
                    room: "r",
                    users: &users,
                    id: None,
                },
                map(&[
                    ("op", text("presence")),
                    ("room", text("r")),
                    ("by", text("user")),
                    (
                        "members",
                        Data::Array(vec![
                            map(&[
                                ("user", text("ada")),
                                ("connections", int(2)),
                                ("info", info.clone()),
                            ]),
                            map(&[
                                ("user", Data::Null),
                                ("connections", int(1)),
                                ("info", Data::Null),
                            ]),
                            map(&[
                                ("user", text("bob")),
                                ("connections", int(u32::MAX.into())),
                                ("info", bytes.clone()),
                            ]),
                        ]),
                    ),
                ]),
            ),
            (
                ServerOp::PresenceByUser {
                    room: "r",
                    users: &[],
                    id: None,
                },
                map(&[
                    ("op", text("presence")),
                    ("room", text("r")),
                    ("by", text("user")),
                    ("members", Data::Array(vec![])),
                ]),
            ),
            (
                ServerOp::Refreshed {
                    exp: 1_767_229_200,
                    id: None,
                },
                map(&[("op", text("refreshed")), ("exp", int(1_767_229_200))]),
            ),
            (
                ServerOp::Refreshed {
                    exp: 1_767_229_200,
                    id: Some(&id),
                },
                map(&[
                    ("op", text("refreshed")),
                    ("exp", int(1_767_229_200)),
                    ("id", id.clone()),
                ]),
            ),
            (
                ServerOp::Refreshed {
                    exp: 0,
                    id: Some(&bytes),
                },
                map(&[
                    ("op", text("refreshed")),
                    ("exp", int(0)),
                    ("id", bytes.clone()),
                ]),
            ),
        ];
        check_against_ciborium(cases);
    }
}
