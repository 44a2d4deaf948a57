//! Static files embedded in the binary and served on the public listener: the JavaScript
//! client (`/client/shardcast.js`, always) and the demo pages (`/`, `/cursor`, `/chat`, unless
//! `[server] demo_pages = false`). No build step: the files in `web/` and `clients/js/` are
//! the files served. A leaf: the gate routes to them, `http::response::asset` answers.

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
pub static ASSETS: &[Asset] = &[
    Asset {
        path: "/client/shardcast.js",
        content_type: JS,
        body: include_bytes!("../clients/js/shardcast.js"),
        demo: false,
    },
    Asset {
        path: "/client/shardcast.d.ts",
        content_type: "application/typescript; charset=utf-8",
        body: include_bytes!("../clients/js/shardcast.d.ts"),
        demo: false,
    },
    Asset {
        path: "/",
        content_type: HTML,
        body: include_bytes!("../web/index.html"),
        demo: true,
    },
    Asset {
        path: "/cursor",
        content_type: HTML,
        body: include_bytes!("../web/cursor.html"),
        demo: true,
    },
    Asset {
        path: "/chat",
        content_type: HTML,
        body: include_bytes!("../web/chat.html"),
        demo: true,
    },
];

/// The embedded file for `path`, if any (demo pages only when `demo_pages`).
pub fn find(path: &str, demo_pages: bool) -> Option<&'static Asset> {
    ASSETS
        .iter()
        .find(|a| a.path == path && (demo_pages || !a.demo))
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
}
