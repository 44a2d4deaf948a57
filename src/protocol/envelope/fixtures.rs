//! Values and frames shared by the envelope tests.

use super::{encode_server, ClientOp, Data, Format, ServerOp};

pub(super) fn int(n: i128) -> Data {
    Data::Integer(ciborium::value::Integer::try_from(n).unwrap())
}

pub(super) fn text(s: &str) -> Data {
    Data::Text(s.to_owned())
}

pub(super) fn map(entries: &[(&str, Data)]) -> Data {
    Data::Map(entries.iter().map(|(k, v)| (text(k), v.clone())).collect())
}

pub(super) fn cbor_value(bytes: &[u8]) -> Data {
    ciborium::de::from_reader(bytes).unwrap()
}

pub(super) fn cbor_bytes(value: &Data) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(value, &mut out).unwrap();
    out
}

pub(super) fn json_text(op: &ServerOp<'_>) -> String {
    String::from_utf8(encode_server(op, Format::Json)).unwrap()
}

pub(super) fn sample_data() -> Vec<Data> {
    vec![
        Data::Null,
        Data::Bool(true),
        int(0),
        int(-1),
        int(u64::MAX.into()),
        int(i64::MIN.into()),
        Data::Float(1.5),
        text(""),
        text("héllo \"quoted\" \\ \n\u{1}"),
        Data::Bytes(vec![]),
        Data::Bytes(vec![0, 1, 2, 0xff]),
        Data::Array(vec![int(1), text("two"), Data::Null]),
        map(&[
            ("text", text("hi")),
            ("n", int(3)),
            ("nested", map(&[("a", Data::Array(vec![]))])),
        ]),
    ]
}

pub(super) fn client_ops() -> Vec<ClientOp> {
    let mut ops = vec![
        ClientOp::Subscribe {
            room: "lobby".into(),
            since: None,
            epoch: None,
            presence: false,
        },
        ClientOp::Subscribe {
            room: "a.b:c-d_9".into(),
            since: Some(0),
            epoch: Some(u64::MAX),
            presence: true,
        },
        ClientOp::Subscribe {
            room: "x".repeat(128),
            since: Some(17),
            epoch: None,
            presence: false,
        },
        ClientOp::Unsubscribe {
            room: "lobby".into(),
        },
        ClientOp::Presence {
            room: "lobby".into(),
            by_user: false,
        },
        ClientOp::Presence {
            room: "lobby".into(),
            by_user: true,
        },
        ClientOp::Refresh {
            token: DOC_TOKEN.into(),
        },
        ClientOp::Refresh {
            token: String::new(),
        },
        ClientOp::Refresh {
            token: "quote \" backslash \\ newline \n é".into(),
        },
        ClientOp::Refresh {
            token: "t".repeat(300),
        },
        ClientOp::History {
            room: "lobby".into(),
            since: None,
            limit: None,
        },
        ClientOp::History {
            room: "lobby".into(),
            since: Some(u64::MAX),
            limit: Some(u32::MAX),
        },
        ClientOp::Publish {
            room: "lobby".into(),
            data: Data::Null,
            id: None,
        },
        ClientOp::Publish {
            room: "lobby".into(),
            data: text("hi"),
            id: Some(text("req-1")),
        },
        ClientOp::Publish {
            room: "lobby".into(),
            data: Data::Bytes(vec![1, 2, 3]),
            id: Some(int(7)),
        },
    ];
    for data in sample_data() {
        ops.push(ClientOp::Publish {
            room: "r".into(),
            data,
            id: Some(map(&[("k", int(1))])),
        });
    }
    ops
}

/// The token of the `refresh` example in docs/protocol.md (`{"alg":"HS256"}`, `{"sub":"ada"}`, a
/// fake signature).
pub(super) const DOC_TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZGEifQ.c2ln";

/// Client frames in docs/protocol.md: (JSON as documented, CBOR hex of the same frame).
pub(super) const DOC_CLIENT_EXAMPLES: [(&str, &str); 9] = [
    (r#"{"op":"subscribe","room":"chat:42","since":17,"epoch":3,"presence":true}"#, "a5626f706973756273637269626564726f6f6d67636861743a34326573696e6365116565706f6368036870726573656e6365f5"),
    (r#"{"op":"unsubscribe","room":"chat:42"}"#, "a2626f706b756e73756273637269626564726f6f6d67636861743a3432"),
    (r#"{"op":"publish","room":"chat:42","data":{"text":"hi"},"id":7}"#, "a4626f70677075626c69736864726f6f6d67636861743a34326464617461a1647465787462686962696407"),
    (r#"{"op":"publish","room":"chat:42","data":"AAEC","enc":"base64"}"#, "a3626f70677075626c69736864726f6f6d67636861743a3432646461746143000102"),
    (r#"{"op":"presence","room":"chat:42"}"#, "a2626f706870726573656e636564726f6f6d67636861743a3432"),
    (r#"{"op":"presence","room":"chat:42","by":"user"}"#, "a3626f706870726573656e636564726f6f6d67636861743a34326262796475736572"),
    (r#"{"op":"history","room":"chat:42","since":10,"limit":50}"#, "a4626f7067686973746f727964726f6f6d67636861743a34326573696e63650a656c696d69741832"),
    (r#"{"op":"history","room":"chat:42"}"#, "a2626f7067686973746f727964726f6f6d67636861743a3432"),
    (r#"{"op":"refresh","token":"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZGEifQ.c2ln"}"#, "a2626f70677265667265736865746f6b656e782c65794a68624763694f694a49557a49314e694a392e65794a7a645749694f694a685a47456966512e63326c6e"),
];
