use super::*;

fn req(text: &str) -> Request {
    parse_request(text.as_bytes(), 8192).unwrap().unwrap().0
}

#[test]
fn health_checks_are_open_the_rest_needs_the_key() {
    let get = |p: &str| req(&format!("GET {p} HTTP/1.1\r\nHost: x\r\n\r\n"));
    assert_eq!(route(&get("/healthz"), false, false), Route::Health);
    assert_eq!(route(&get("/readyz"), false, false), Route::Ready);
    assert_eq!(
        route(&get("/metrics"), true, false),
        Route::Metrics { openmetrics: false }
    );
    let om =
        req("GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text;version=1.0.0\r\n\r\n");
    assert_eq!(
        route(&om, true, false),
        Route::Metrics { openmetrics: true }
    );
    assert_eq!(
        route(&get("/metrics"), false, false),
        Route::Refuse(401, "admin key required")
    );
    assert_eq!(route(&get("/"), true, false), Route::Page);
    assert_eq!(route(&get("/events"), true, false), Route::Events);
    assert_eq!(
        route(&get("/nope"), true, false),
        Route::Refuse(404, "not found")
    );
    assert_eq!(
        route(&get("/reload"), true, false),
        Route::Refuse(405, "method not allowed")
    );
    let post = |p: &str| req(&format!("POST {p} HTTP/1.1\r\nHost: x\r\n\r\n"));
    assert_eq!(route(&post("/reload"), true, false), Route::Reload);
    assert_eq!(
        route(&post("/drain?over=30s"), true, false),
        Route::Drain {
            over: Some(Duration::from_secs(30))
        }
    );
    assert_eq!(
        route(&post("/drain"), true, false),
        Route::Drain { over: None }
    );
    assert_eq!(
        route(&post("/drain?over=soon"), true, false),
        Route::Refuse(400, "over: a duration such as 30s")
    );
    assert_eq!(
        route(&post("/test/stall?shard=1&ms=50"), true, false),
        Route::Refuse(404, "not found"),
        "test hooks off"
    );
    assert_eq!(
        route(&post("/test/stall?shard=1&ms=50"), true, true),
        Route::Stall { shard: 1, ms: 50 }
    );
}

#[test]
fn the_key_comes_as_bearer_or_query() {
    let r = |extra: &str, q: &str| {
        req(&format!(
            "GET /metrics{q} HTTP/1.1\r\nHost: x\r\n{extra}\r\n"
        ))
    };
    assert!(authorized(&r("", ""), None));
    assert!(!authorized(&r("", ""), Some("k1")));
    assert!(authorized(
        &r("Authorization: Bearer k1\r\n", ""),
        Some("k1")
    ));
    assert!(!authorized(
        &r("Authorization: Bearer k2\r\n", ""),
        Some("k1")
    ));
    assert!(authorized(&r("", "?key=k1"), Some("k1")));
    assert!(!authorized(&r("", "?key=k"), Some("k1")));
}
