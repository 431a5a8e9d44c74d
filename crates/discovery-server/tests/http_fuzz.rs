//! Random requests against the whole HTTP layer, in process: methods,
//! paths, query strings, bodies and headers drawn from the API's own
//! vocabulary and from garbage. No request may panic the server, every
//! answer must be a valid envelope (or a plain 404/405), and instances
//! registered before the run must be intact after it.
//!
//! Runs for `FUZZ_SECS` seconds (default 3) from seed `FUZZ_SEED` (default:
//! time); `cargo xtask fuzz` runs it longer.

mod common;

use std::time::{Duration, Instant};

use axum::body::Body;
use common::Harness;
use http::Request;
use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};

const ROUTES: &[&str] = &[
    "/discovery/register",
    "/discovery/renew",
    "/discovery/cancel",
    "/discovery/set",
    "/discovery/fetch/all",
    "/discovery/fetch",
    "/discovery/fetchs",
    "/discovery/poll",
    "/discovery/polls",
    "/discovery/nodes",
    "/",
    "/status",
    "/metrics",
    "/healthz",
    "/readyz",
    "/discovery",
    "/discovery/",
    "//discovery/fetch",
    "/discovery/fetch/all/x",
    "/discovery/%66etch",
    "/x",
    "/discovery/register/",
    "/discovery/../discovery/fetch",
];
const KEYS: &[&str] = &[
    "zone",
    "env",
    "appid",
    "hostname",
    "status",
    "addrs",
    "metadata",
    "region",
    "version",
    "replication",
    "from_zone",
    "dirty_timestamp",
    "reg_timestamp",
    "latest_timestamp",
    "set_timestamp",
    "token",
    "",
    "appid[]",
    "x",
];
const VALUES: &[&str] = &[
    "",
    "0",
    "1",
    "2",
    "3",
    "-1",
    "+1",
    "4294967296",
    "9223372036854775807",
    "-9223372036854775808",
    "99999999999999999999",
    "true",
    "True",
    "t",
    "no",
    "dev",
    "sh001",
    "fuzz.app",
    "fuzz.other",
    "grpc://1.2.3.4:9000",
    "http://[::1]:80",
    "grpc://h",
    "a,b",
    "{}",
    "null",
    "[]",
    "{\"weight\":10}",
    "{\"a\":null}",
    "{\"a\":{\"b\":[1,2]}}",
    "{bad",
    "%zz",
    "%00",
    "ü",
    "💥",
    "\u{0}",
    " ",
];
const CONTENT_TYPES: &[&str] = &[
    "application/x-www-form-urlencoded",
    "application/x-www-form-urlencoded; charset=utf-8",
    "multipart/form-data; boundary=B",
    "multipart/form-data",
    "application/json",
    "text/xml",
    "text/plain",
    "",
    "garbage/;;;",
];

fn value(rng: &mut StdRng) -> String {
    match rng.random_range(0..10) {
        0 => "x".repeat(rng.random_range(200..3000)),
        1 => (0..rng.random_range(1..20))
            .map(|_| rng.random::<char>())
            .collect(),
        _ => VALUES.choose(rng).unwrap().to_string(),
    }
}

fn pairs(rng: &mut StdRng) -> String {
    let n = rng.random_range(0..12);
    let mut s = form_urlencoded::Serializer::new(String::new());
    for _ in 0..n {
        let k = KEYS.choose(rng).unwrap();
        s.append_pair(k, &value(rng));
    }
    let mut out = s.finish();
    if rng.random_ratio(1, 8) {
        // Raw, possibly malformed encoding.
        out.push_str(&format!("&{}={}", value(rng), value(rng)));
    }
    out
}

fn request(rng: &mut StdRng) -> Request<Body> {
    let method =
        ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"][rng.random_range(0..7)];
    let mut uri = ROUTES.choose(rng).unwrap().to_string();
    if rng.random_bool(0.8) {
        let q = pairs(rng);
        // Only URI-safe text goes into the request line.
        if q.bytes().all(|b| b.is_ascii_graphic()) {
            uri = format!("{uri}?{q}");
        }
    }
    let mut b = Request::builder().method(method).uri(uri.as_str());
    let ct = CONTENT_TYPES.choose(rng).unwrap();
    if !ct.is_empty() {
        b = b.header("content-type", *ct);
    }
    if rng.random_ratio(1, 3) {
        let t = [
            ("x1-bmspy-timeout", "0"),
            ("x1-bmspy-timeout", "-5"),
            ("x1-bmspy-timeout", "abc"),
            ("x1-bmspy-timeout", "99999999999999999999"),
            ("authorization", "Bearer x"),
            ("authorization", "Basic !!!"),
        ]
        .choose(rng)
        .copied()
        .unwrap();
        b = b.header(t.0, t.1);
    }
    let body = match rng.random_range(0..4) {
        0 => Vec::new(),
        1 => pairs(rng).into_bytes(),
        2 => (0..rng.random_range(0..500))
            .map(|_| rng.random::<u8>())
            .collect(),
        _ => format!(
            "--B\r\nContent-Disposition: form-data; name=\"appid\"\r\n\r\n{}\r\n--B--\r\n",
            value(rng)
        )
        .into_bytes(),
    };
    b.body(Body::from(body))
        .unwrap_or_else(|_| Request::get("/").body(Body::empty()).unwrap())
}

#[tokio::test(start_paused = true)]
async fn random_requests_never_break_the_server_or_its_data() {
    let h = Harness::new();
    for host in ["p1", "p2", "p3"] {
        let r = h
            .post("/discovery/register", &format!("zone=sh001&env=dev&appid=protected.app&hostname={host}&status=1&addrs=grpc://{host}:1&metadata=%7B%22k%22%3A%22v%22%7D"))
            .await;
        assert_eq!(r.code(), 0);
    }
    let before = h
        .get("/discovery/fetch?env=dev&appid=protected.app&status=3")
        .await
        .json()["data"]["instances"]
        .clone();

    let seed = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    let secs = std::env::var("FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    println!("FUZZ_SEED={seed} FUZZ_SECS={secs}");
    let mut rng = StdRng::seed_from_u64(seed);
    // Paused tokio time would stop `Instant`-free loops from ending; the
    // budget is counted in wall time.
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut n = 0u64;
    while Instant::now() < deadline {
        let req = request(&mut rng);
        let desc = format!("{} {}", req.method(), req.uri());
        let head = req.method() == http::Method::HEAD;
        let r = h.send(req).await;
        n += 1;
        if head {
            // Answers to HEAD carry no body.
            assert!(
                matches!(r.status, 200 | 404 | 405) && r.body.is_empty(),
                "{desc}: {} {}",
                r.status,
                r.body
            );
            continue;
        }
        match r.status {
            404 => assert_eq!(r.body, "404 page not found", "{desc}"),
            405 => assert!(
                r.body == "Method Not Allowed" || r.body.is_empty(),
                "{desc}: {}",
                r.body
            ),
            200 => {
                let ct = r
                    .headers
                    .get("content-type")
                    .map(|v| v.to_str().unwrap().to_string())
                    .unwrap_or_default();
                if ct.starts_with("application/json; charset=utf-8") {
                    let v = r.json();
                    assert!(v["code"].is_i64(), "{desc}: {}", r.body);
                    assert!(v["message"].is_string(), "{desc}: {}", r.body);
                    assert_eq!(
                        r.headers["kratos-status-code"].to_str().unwrap(),
                        v["code"].to_string(),
                        "{desc}"
                    );
                } else {
                    assert!(
                        [
                            "text/html",
                            "application/json",
                            "application/openmetrics-text",
                            "text/plain"
                        ]
                        .iter()
                        .any(|p| ct.starts_with(p)),
                        "{desc}: content-type {ct:?}"
                    );
                }
            }
            other => panic!("{desc}: unexpected HTTP {other}: {}", r.body),
        }
    }
    println!("{n} random requests");
    assert!(n > 100);
    let after = h
        .get("/discovery/fetch?env=dev&appid=protected.app&status=3")
        .await
        .json()["data"]["instances"]
        .clone();
    assert_eq!(before, after, "registered data intact (seed {seed})");
}
