//! HTTP responses the daemon writes itself (plain text and JSON).

use crate::protocol::handshake::http_response;

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
