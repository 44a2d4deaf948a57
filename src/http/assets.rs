//! Static files embedded in the binary and served on the public listener: the JavaScript
//! client (`/client/shardcast.js`, always) and the demo pages (`/`, `/cursor`, `/chat`, unless
//! `[server] demo_pages = false`). No build step: the files in `web/` and `clients/js/` are
//! the files served.

use crate::protocol::handshake::http_response_bytes;

/// One embedded file.
#[derive(Debug, PartialEq, Eq)]
pub struct Asset {
    /// Request path it answers.
    pub path: &'static str,
    /// `Content-Type` header value.
    pub content_type: &'static str,
    /// The file.
    pub body: &'static [u8],
    /// A demo page (served only with `[server] demo_pages`).
    pub demo: bool,
}

const JS: &str = "text/javascript; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";

/// Every embedded file.
pub(crate) static ASSETS: &[Asset] = &[
    Asset {
        path: "/client/shardcast.js",
        content_type: JS,
        body: include_bytes!("../../clients/js/shardcast.js"),
        demo: false,
    },
    Asset {
        path: "/client/shardcast.d.ts",
        content_type: "application/typescript; charset=utf-8",
        body: include_bytes!("../../clients/js/shardcast.d.ts"),
        demo: false,
    },
    Asset {
        path: "/",
        content_type: HTML,
        body: include_bytes!("../../web/index.html"),
        demo: true,
    },
    Asset {
        path: "/cursor",
        content_type: HTML,
        body: include_bytes!("../../web/cursor.html"),
        demo: true,
    },
    Asset {
        path: "/chat",
        content_type: HTML,
        body: include_bytes!("../../web/chat.html"),
        demo: true,
    },
];

/// The embedded file for `path`, if any (demo pages only when `demo_pages`).
pub(crate) fn find(path: &str, demo_pages: bool) -> Option<&'static Asset> {
    ASSETS
        .iter()
        .find(|a| a.path == path && (demo_pages || !a.demo))
}

/// The full response for `asset` (no body for `HEAD`).
pub(crate) fn response(asset: &Asset, head: bool) -> Vec<u8> {
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
    fn demo_pages_only_when_enabled_the_client_always() {
        assert!(find("/", true).is_some());
        assert!(find("/chat", true).is_some());
        assert_eq!(find("/", false), None);
        assert_eq!(find("/cursor", false), None);
        assert!(find("/client/shardcast.js", false).is_some());
        assert_eq!(find("/nope", true), None);
    }

    #[test]
    fn head_has_the_length_but_no_body() {
        let a = find("/client/shardcast.js", true).unwrap();
        let full = response(a, false);
        let head = response(a, true);
        let len = format!("Content-Length: {}\r\n", a.body.len());
        assert!(String::from_utf8_lossy(&head).contains(&len));
        assert!(String::from_utf8_lossy(&head).ends_with("\r\n\r\n"));
        assert_eq!(full.len(), head.len() + a.body.len());
    }
}
