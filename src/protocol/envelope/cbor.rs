//! CBOR encoding (RFC 8949): server and client frames written straight into a `Vec<u8>` in
//! shortest form (`"op"` first), payload data through ciborium.

use super::{ClientOp, Data, EncodeError, ServerOp};

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
        ServerOp::Welcome { conn } => {
            cbor_open(out, name, 2);
            cbor_text(out, "conn");
            cbor_u64(out, conn);
        }
        ServerOp::Subscribed {
            room,
            seq,
            epoch,
            recovered,
        } => cbor_subscribed(out, name, room, seq, epoch, recovered),
        ServerOp::Unsubscribed { room } => {
            cbor_open(out, name, 2);
            cbor_entry_text(out, "room", room);
        }
        ServerOp::Message {
            room,
            seq,
            from,
            data,
        } => cbor_message(out, name, room, seq, from, data)?,
        ServerOp::Join { room, conn, info } | ServerOp::Leave { room, conn, info } => {
            cbor_join_leave(out, name, room, conn, info)?
        }
        ServerOp::Presence { room, members } => cbor_presence(out, name, room, members)?,
        ServerOp::History {
            room,
            epoch,
            messages,
            complete,
        } => cbor_history(out, name, room, epoch, messages, complete)?,
        ServerOp::Ack { id, seq } => {
            cbor_open(out, name, 3);
            cbor_text(out, "id");
            cbor_data(out, id)?;
            cbor_entry_u64(out, "seq", seq);
        }
        ServerOp::Error { code, reason, id } => cbor_error(out, name, code, reason, id)?,
    }
    Ok(())
}

/// A `subscribed` map; `name` is its op.
fn cbor_subscribed(
    out: &mut Vec<u8>,
    name: &str,
    room: &str,
    seq: u64,
    epoch: u64,
    recovered: bool,
) {
    cbor_open(out, name, 5);
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
    info: &Data,
) -> Result<(), EncodeError> {
    cbor_open(out, name, 4);
    cbor_entry_text(out, "room", room);
    cbor_entry_u64(out, "conn", conn);
    cbor_text(out, "info");
    cbor_data(out, info)
}

/// A `presence` map; `name` is its op.
fn cbor_presence(
    out: &mut Vec<u8>,
    name: &str,
    room: &str,
    members: &[(u64, Data)],
) -> Result<(), EncodeError> {
    cbor_open(out, name, 3);
    cbor_entry_text(out, "room", room);
    cbor_text(out, "members");
    cbor_head(out, CBOR_ARRAY, members.len() as u64);
    for (conn, info) in members {
        cbor_head(out, CBOR_MAP, 2);
        cbor_entry_u64(out, "conn", *conn);
        cbor_text(out, "info");
        cbor_data(out, info)?;
    }
    Ok(())
}

/// A `history` map; `name` is its op.
fn cbor_history(
    out: &mut Vec<u8>,
    name: &str,
    room: &str,
    epoch: u64,
    messages: &[(u64, Option<u64>, Data)],
    complete: bool,
) -> Result<(), EncodeError> {
    cbor_open(out, name, 5);
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
    cbor_open(out, name, if id.is_some() { 4 } else { 3 });
    cbor_entry_text(out, "code", code);
    cbor_entry_text(out, "reason", reason);
    if let Some(id) = id {
        cbor_text(out, "id");
        cbor_data(out, id)?;
    }
    Ok(())
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
        ClientOp::Unsubscribe { room } | ClientOp::Presence { room } => {
            cbor_open(out, op.name(), 2);
            cbor_entry_text(out, "room", room);
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
        let members = [(12, info.clone()), (15, Data::Null)];
        let bytes = Data::Bytes(vec![0, 1, 2]);
        let messages = [(21, Some(12), data.clone()), (22, None, bytes.clone())];
        let id = text("m-1");
        let cases: Vec<(ServerOp<'_>, Data)> = vec![
            (
                ServerOp::Welcome { conn: 12 },
                map(&[("op", text("welcome")), ("conn", int(12))]),
            ),
            (
                ServerOp::Subscribed {
                    room: "chat:42",
                    seq: 20,
                    epoch: u64::MAX,
                    recovered: false,
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
        for (op, expected) in cases {
            let got = encode_server(&op, Format::Cbor);
            // Decoded by ciborium, key order included ("op" first), and byte-identical to
            // ciborium's own (shortest-form) encoding of the same map.
            assert_eq!(cbor_value(&got), expected, "{}", op.name());
            assert_eq!(got, cbor_bytes(&expected), "{}", op.name());
        }
    }
}
