//! HTTP responses the daemon writes itself (plain text and JSON).

use crate::assets::Asset;
use crate::protocol::handshake::{http_response, http_response_bytes};

/// A plain-text response.
pub(crate) fn text(status: u16, body: &str) -> Vec<u8> {
    http_response(status, "text/plain; charset=utf-8", "", body)
}

/// A JSON response.
pub(crate) fn json(status: u16, body: &serde_json::Value) -> Vec<u8> {
    http_response(status, "application/json", "", &format!("{body}\n"))
}

/// A JSON error response `{"error":CODE,"reason":TEXT}`.
pub(crate) fn api_error(status: u16, code: &str, reason: &str) -> Vec<u8> {
    json(
        status,
        &serde_json::json!({ "error": code, "reason": reason }),
    )
}

/// An embedded file (no body for `HEAD`).
pub(crate) fn asset(asset: &Asset, head: bool) -> Vec<u8> {
    let body: &[u8] = if head { b"" } else { asset.body };
    http_response_bytes(
        200,
        asset.content_type,
        "Cache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\n",
        body,
        asset.body.len(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_has_the_length_but_no_body() {
        let a = crate::assets::find("/client/shardcast.js", true).unwrap();
        let full = asset(a, false);
        let head = asset(a, true);
        let len = format!("Content-Length: {}\r\n", a.body.len());
        assert!(String::from_utf8_lossy(&head).contains(&len));
        assert!(String::from_utf8_lossy(&head).ends_with("\r\n\r\n"));
        assert_eq!(full.len(), head.len() + a.body.len());
    }
}
