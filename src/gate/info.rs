//! The envelope connection's `?info=` query parameter: percent-encoded JSON, bounded.

use crate::protocol::envelope::{self, Data};

pub(super) fn parse(query: Option<&str>, max: usize) -> Result<Data, String> {
    let Some(raw) = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("info="))
    else {
        return Ok(Data::Null);
    };
    let bytes = percent_decode(raw).ok_or("bad percent-encoding")?;
    if bytes.len() > max {
        return Err(format!("larger than {max} bytes"));
    }
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("not JSON: {e}"))?;
    Ok(envelope::data_from_json(value))
}
/// `?session=`: 1-64 bytes of `A-Za-z0-9_-` (`Err` otherwise), `None` when absent.
pub(super) fn session(query: Option<&str>) -> Result<Option<std::sync::Arc<str>>, ()> {
    let Some(raw) = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("session="))
    else {
        return Ok(None);
    };
    let ok = (1..=64).contains(&raw.len())
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(Some(std::sync::Arc::from(raw)))
    } else {
        Err(())
    }
}

pub(super) use crate::protocol::handshake::percent_decode;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_is_bounded_percent_encoded_json() {
        assert_eq!(parse(None, 10), Ok(Data::Null));
        assert_eq!(parse(Some("a=1"), 10), Ok(Data::Null));
        assert_eq!(
            parse(Some("x=1&info=%7B%22n%22%3A1%7D"), 100),
            Ok(envelope::data_from_json(serde_json::json!({"n": 1})))
        );
        assert_eq!(
            parse(Some("info=%22a+b%22"), 100),
            Ok(Data::Text("a b".into()))
        );
        assert!(parse(Some("info=%7"), 100).unwrap_err().contains("percent"));
        assert!(parse(Some("info=%22aaaa%22"), 3)
            .unwrap_err()
            .contains("larger"));
        assert!(parse(Some("info=nope"), 100)
            .unwrap_err()
            .contains("not JSON"));
    }
}
