//! Payload data conversions: JSON values to and from [`Data`], raw clients' messages to and
//! from [`Data`].

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use super::json::{json_data, json_key_text};
use super::{untag_ref, Data};

/// A JSON value as [`Data`]: integers that fit `u64` or `i64` become integers, other numbers
/// floats, objects maps with text keys (in the object's order).
pub fn data_from_json(value: serde_json::Value) -> Data {
    match value {
        serde_json::Value::Null => Data::Null,
        serde_json::Value::Bool(b) => Data::Bool(b),
        serde_json::Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                Data::Integer(u.into())
            } else if let Some(i) = n.as_i64() {
                Data::Integer(i.into())
            } else {
                Data::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        serde_json::Value::String(s) => Data::Text(s),
        serde_json::Value::Array(items) => {
            Data::Array(items.into_iter().map(data_from_json).collect())
        }
        serde_json::Value::Object(map) => Data::Map(
            map.into_iter()
                .map(|(k, v)| (Data::Text(k), data_from_json(v)))
                .collect(),
        ),
    }
}

/// [`Data`] as a JSON value: bytes become base64 text (standard, padded), tags are dropped,
/// non-text map keys become text (base64 for bytes, else their compact JSON), integers beyond
/// `i64`/`u64` become floats, NaN and infinities become `null`. The module docs say where the
/// frames add `"enc":"base64"`; this function never does.
pub fn data_to_json(data: &Data) -> serde_json::Value {
    match untag_ref(data) {
        Data::Null => serde_json::Value::Null,
        Data::Bool(b) => serde_json::Value::Bool(*b),
        Data::Integer(n) => {
            let n = i128::from(*n);
            if let Ok(u) = u64::try_from(n) {
                u.into()
            } else if let Ok(i) = i64::try_from(n) {
                i.into()
            } else {
                float_to_json(n as f64)
            }
        }
        Data::Float(f) => float_to_json(*f),
        Data::Text(t) => serde_json::Value::String(t.clone()),
        Data::Bytes(b) => serde_json::Value::String(BASE64.encode(b)),
        Data::Array(items) => serde_json::Value::Array(items.iter().map(data_to_json).collect()),
        Data::Map(entries) => serde_json::Value::Object(
            entries
                .iter()
                .map(|(k, v)| (json_key_text(k), data_to_json(v)))
                .collect(),
        ),
        _ => serde_json::Value::Null,
    }
}

fn float_to_json(f: f64) -> serde_json::Value {
    serde_json::Number::from_f64(f).map_or(serde_json::Value::Null, serde_json::Value::Number)
}

/// What a raw client's message becomes for envelope subscribers: text → [`Data::Text`] (or
/// [`Data::Bytes`] should it not be UTF-8 after all), binary → [`Data::Bytes`].
pub fn raw_frame_data(opcode_is_text: bool, payload: &[u8]) -> Data {
    if opcode_is_text {
        if let Ok(text) = simdutf8::basic::from_utf8(payload) {
            return Data::Text(text.to_owned());
        }
    }
    Data::Bytes(payload.to_vec())
}

/// What raw clients receive for an envelope publish: `(is_text, payload)`. A string is sent as
/// a text message, a byte string as a binary message (tags dropped first), anything else as a
/// text message holding its compact JSON ([`data_to_json`]'s mapping).
pub fn data_to_raw(data: &Data) -> (bool, Vec<u8>) {
    match untag_ref(data) {
        Data::Text(t) => (true, t.as_bytes().to_vec()),
        Data::Bytes(b) => (false, b.clone()),
        other => {
            let mut out = Vec::new();
            if json_data(&mut out, other).is_err() {
                out.clear();
                out.extend_from_slice(b"null");
            }
            (true, out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{int, map, sample_data, text};
    use super::*;

    #[test]
    fn json_conversions() {
        // Integers round-trip at the edges.
        for n in [
            0i128,
            1,
            -1,
            255,
            65536,
            i64::MIN.into(),
            i64::MAX.into(),
            u64::MAX.into(),
        ] {
            let json = data_to_json(&int(n));
            assert_eq!(json.to_string(), n.to_string());
            assert_eq!(data_from_json(json), int(n));
        }
        // Beyond i64: a float.
        assert_eq!(
            data_to_json(&int(-(1 << 64))),
            serde_json::json!(-18446744073709551616.0)
        );
        assert_eq!(
            data_to_json(&Data::Float(f64::NAN)),
            serde_json::Value::Null
        );
        assert_eq!(
            data_to_json(&Data::Float(f64::INFINITY)),
            serde_json::Value::Null
        );
        assert_eq!(data_from_json(serde_json::json!(2.5)), Data::Float(2.5));
        // Nested values, tags dropped, keys stringified.
        let data = Data::Map(vec![
            (
                text("a"),
                Data::Array(vec![
                    int(1),
                    Data::Float(0.5),
                    Data::Null,
                    Data::Bool(false),
                ]),
            ),
            (int(7), text("seven")),
            (Data::Bytes(vec![0xff]), text("bytes")),
            (Data::Bool(true), text("bool")),
            (
                Data::Tag(5, Box::new(text("k"))),
                Data::Tag(1, Box::new(int(99))),
            ),
            (
                Data::Array(vec![int(1), int(2)]),
                Data::Bytes(vec![1, 2, 3]),
            ),
        ]);
        let expected = serde_json::json!({
            "a": [1, 0.5, null, false],
            "7": "seven",
            "/w==": "bytes",
            "true": "bool",
            "k": 99,
            "[1,2]": "AQID",
        });
        assert_eq!(data_to_json(&data), expected);
        // The streaming writer agrees with data_to_json, and JSON → Data → JSON is the identity.
        let mut all = sample_data();
        all.push(data);
        for d in &all {
            let mut written = Vec::new();
            json_data(&mut written, d).unwrap();
            let reparsed: serde_json::Value = serde_json::from_slice(&written).unwrap();
            assert_eq!(reparsed, data_to_json(d), "{d:?}");
            assert_eq!(data_to_json(&data_from_json(reparsed.clone())), reparsed);
        }
        // Parsing JSON straight into Data (what decode_client does) equals data_from_json.
        let src =
            r#"{"x":[1,-2,18446744073709551615,-9223372036854775808,1.5,1e300,"s",true,null,{}]}"#;
        let direct: Data = serde_json::from_str(src).unwrap();
        assert_eq!(direct, data_from_json(serde_json::from_str(src).unwrap()));
    }

    #[test]
    fn raw_conversions() {
        assert_eq!(raw_frame_data(true, b"hello"), text("hello"));
        assert_eq!(
            raw_frame_data(true, &[0xff, 0xfe]),
            Data::Bytes(vec![0xff, 0xfe])
        );
        assert_eq!(
            raw_frame_data(false, b"hello"),
            Data::Bytes(b"hello".to_vec())
        );
        assert_eq!(raw_frame_data(false, b""), Data::Bytes(vec![]));
        assert_eq!(data_to_raw(&text("hi")), (true, b"hi".to_vec()));
        assert_eq!(data_to_raw(&Data::Bytes(vec![1, 2])), (false, vec![1, 2]));
        assert_eq!(
            data_to_raw(&Data::Tag(9, Box::new(Data::Bytes(vec![3])))),
            (false, vec![3])
        );
        assert_eq!(data_to_raw(&int(42)), (true, b"42".to_vec()));
        assert_eq!(data_to_raw(&Data::Null), (true, b"null".to_vec()));
        assert_eq!(
            data_to_raw(&map(&[(
                "a",
                Data::Array(vec![int(1), Data::Bytes(vec![0])])
            )])),
            (true, br#"{"a":[1,"AA=="]}"#.to_vec())
        );
        // Raw → envelope → raw is the identity for both message kinds.
        for (is_text, payload) in [(true, &b"text"[..]), (false, &[0u8, 159, 146, 150][..])] {
            assert_eq!(
                data_to_raw(&raw_frame_data(is_text, payload)),
                (is_text, payload.to_vec())
            );
        }
    }
}
