//! The single-node wire contract (docs/protocol.md), item by item,
//! one test per item or small group, driven through `Router::oneshot`.

mod common;

use axum::body::Body;
use common::Harness;
use http::Request;
use serde_json::{Value, json};

#[tokio::test]
async fn c01_json_answers_are_http_200_with_charset_and_status_header() {
    let h = Harness::new();
    for r in [
        h.register("sh001", "h1", "").await,
        h.fetch("status=1").await,
        h.get("/discovery/fetch?env=dev&appid=nope&status=1").await,
        h.post("/discovery/renew", "zone=sh001&env=dev").await,
    ] {
        assert_eq!(r.status, 200);
        assert_eq!(r.headers["content-type"], "application/json; charset=utf-8");
        assert_eq!(
            r.headers["kratos-status-code"].to_str().unwrap(),
            r.code().to_string()
        );
    }
}

#[tokio::test]
async fn c02_register_cancel_set_succeed_with_the_bare_envelope() {
    let h = Harness::new();
    let ok = r#"{"code":0,"message":"0","ttl":1}"#;
    assert_eq!(h.register("sh001", "h1", "").await.body, ok);
    let set = h
        .post(
            "/discovery/set",
            "zone=sh001&env=dev&appid=demo.svc&hostname=h1&status=2",
        )
        .await;
    assert_eq!(set.body, ok);
    let cancel = h
        .post(
            "/discovery/cancel",
            "zone=sh001&env=dev&appid=demo.svc&hostname=h1",
        )
        .await;
    assert_eq!(cancel.body, ok);
}

#[tokio::test]
async fn c03_wrong_method_is_405_and_unknown_path_404() {
    let h = Harness::new();
    let r = h.get("/discovery/register").await;
    assert_eq!((r.status, r.body.as_str()), (405, "Method Not Allowed"));
    assert_eq!(r.headers["content-type"], "text/plain");
    let r = h.post("/discovery/fetch", "").await;
    assert_eq!(r.status, 405);
    let r = h.get("/discovery/nope").await;
    assert_eq!((r.status, r.body.as_str()), (404, "404 page not found"));
    assert_eq!(r.headers["content-type"], "text/plain");
}

#[tokio::test]
async fn c04_body_and_query_both_bind_body_first() {
    let h = Harness::new();
    // Body says sh001, query says sh002: the body wins; the query fills in.
    let r = h
        .send(
            Request::post("/discovery/register?zone=sh002&status=1&addrs=grpc://q:1")
                .header("content-type", "application/x-www-form-urlencoded")
                .body(Body::from("zone=sh001&env=dev&appid=demo.svc&hostname=h1"))
                .unwrap(),
        )
        .await;
    assert_eq!(r.code(), 0, "{}", r.body);
    let data = h.fetch("status=1").await.json()["data"].clone();
    assert_eq!(
        data["instances"]["sh001"][0]["addrs"],
        json!(["grpc://q:1"])
    );
    assert!(data["instances"].get("sh002").is_none());

    // Without a content type, only the query binds.
    let r = h
        .send(
            Request::post("/discovery/renew?zone=sh001&env=dev&appid=demo.svc")
                .body(Body::from("hostname=h1"))
                .unwrap(),
        )
        .await;
    assert_eq!(r.code(), -400);
    assert!(r.json()["message"].as_str().unwrap().contains("'hostname'"));
}

#[tokio::test]
async fn c04_json_bodies_are_refused_and_multipart_binds() {
    let h = Harness::new();
    let r = h
        .send(
            Request::post("/discovery/register")
                .header("content-type", "application/json")
                .body(Body::from("{}"))
                .unwrap(),
        )
        .await;
    assert_eq!(
        r.json(),
        json!({"code":-400,"message":"unsupported content type","ttl":1})
    );

    let boundary = "XyZ";
    let mut body = String::new();
    for (k, v) in [
        ("zone", "sh001"),
        ("env", "dev"),
        ("appid", "demo.svc"),
        ("hostname", "mp"),
        ("status", "1"),
        ("addrs", "http://mp:80"),
    ] {
        body.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
        ));
    }
    body.push_str(&format!("--{boundary}--\r\n"));
    let r = h
        .send(
            Request::post("/discovery/register")
                .header(
                    "content-type",
                    format!("multipart/form-data; boundary={boundary}"),
                )
                .body(Body::from(body))
                .unwrap(),
        )
        .await;
    assert_eq!(r.code(), 0, "{}", r.body);
    assert_eq!(
        h.fetch("status=1").await.json()["data"]["instances"]["sh001"][0]["hostname"],
        "mp"
    );
}

#[tokio::test]
async fn c05_lists_are_never_split_and_empties_drop() {
    let h = Harness::new();
    let r = h
        .post(
            "/discovery/register",
            "zone=sh001&env=dev&appid=a,b&hostname=h1&status=1&addrs=&addrs=x://h:1",
        )
        .await;
    assert_eq!(r.code(), 0);
    let r = h.get("/discovery/fetch?env=dev&appid=a,b&status=1").await;
    assert_eq!(
        r.json()["data"]["instances"]["sh001"][0]["addrs"],
        json!(["x://h:1"])
    );
    assert_eq!(
        h.get("/discovery/fetch?env=dev&appid=a&status=1")
            .await
            .code(),
        -404
    );
}

#[tokio::test]
async fn c06_missing_or_malformed_parameters_are_named() {
    let h = Harness::new();
    for (form, name) in [
        ("env=dev&appid=a&hostname=h&status=1&addrs=x://h:1", "zone"),
        ("zone=z&appid=a&hostname=h&status=1&addrs=x://h:1", "env"),
        ("zone=z&env=dev&hostname=h&status=1&addrs=x://h:1", "appid"),
        ("zone=z&env=dev&appid=a&status=1&addrs=x://h:1", "hostname"),
        (
            "zone=z&env=dev&appid=a&hostname=h&status=1&dirty_timestamp=x1&addrs=x://h:1",
            "dirty_timestamp",
        ),
    ] {
        let r = h.post("/discovery/register", form).await;
        assert_eq!(r.code(), -400, "{form}");
        let msg = r.json()["message"].as_str().unwrap().to_string();
        assert!(
            msg.starts_with(&format!("invalid parameter '{name}'")),
            "{msg}"
        );
    }
    let r = h
        .get("/discovery/polls?env=dev&hostname=c&appid=demo.svc&latest_timestamp=abc")
        .await;
    assert_eq!(r.code(), -400);
    assert!(r.body.contains("'latest_timestamp'"), "{}", r.body);
    assert_eq!(h.api.registry().len(), 0, "nothing stored");
}

#[tokio::test]
async fn c07_fetch_returns_all_14_fields_in_order_with_exact_ns() {
    let h = Harness::new();
    h.register(
        "sh001",
        "h1",
        "&metadata=%7B%22weight%22%3A%2210%22%7D&dirty_timestamp=9007199254740993",
    )
    .await;
    let r = h.fetch("status=1").await;
    let start = r.body.find(r#"{"region""#).unwrap();
    let ins = &r.body[start..];
    let keys = [
        "region",
        "zone",
        "env",
        "appid",
        "hostname",
        "addrs",
        "version",
        "metadata",
        "status",
        "reg_timestamp",
        "up_timestamp",
        "renew_timestamp",
        "dirty_timestamp",
        "latest_timestamp",
    ];
    let mut pos = 0;
    for k in keys {
        let at = ins[pos..]
            .find(&format!("\"{k}\":"))
            .unwrap_or_else(|| panic!("{k} in {ins}"));
        pos += at + 1;
    }
    assert!(
        ins.contains(r#""dirty_timestamp":9007199254740993,"#),
        "{ins}"
    );
    assert!(r.body.starts_with(r#"{"code":0,"message":"0","ttl":1,"data":{"instances":{"sh001":[{"region":"sh","zone":"sh001","env":"dev","appid":"demo.svc","hostname":"h1","addrs":["grpc://h1:9000"],"version":"v1","metadata":{"weight":"10"},"status":1,"reg_timestamp":"#));
}

#[tokio::test]
async fn c08_bad_status_or_no_addrs_is_refused_and_stores_nothing() {
    let h = Harness::new();
    for extra in [
        "&status=0&addrs=x://h:1",
        "&status=3&addrs=x://h:1",
        "&addrs=x://h:1",
        "&status=1",
        "&status=-1&addrs=x://h:1",
        "&status=4294967297&addrs=x://h:1",
    ] {
        let r = h
            .post(
                "/discovery/register",
                &format!("zone=z&env=dev&appid=a&hostname=h{extra}"),
            )
            .await;
        assert_eq!(r.code(), -400, "{extra}: {}", r.body);
    }
    assert_eq!(h.api.registry().len(), 0);
}

#[tokio::test]
async fn c08_addresses_are_opaque_values_as_the_go_original_keeps_them() {
    let h = Harness::new();
    // Each value is one address, stored as sent: no port, paths, unix
    // sockets, and a comma-joined value from a client kept whole.
    let accepted = [
        "grpc://myhost",
        "http://example.com/path",
        "unix:///tmp/x.sock",
        "http://a:1,grpc://b:2",
        "h:1",
    ];
    for (i, a) in accepted.iter().enumerate() {
        let form = form_urlencoded::Serializer::new(String::new())
            .extend_pairs([
                ("zone", "sh001"),
                ("env", "dev"),
                ("appid", "demo.svc"),
                ("hostname", &format!("a{i}")),
                ("status", "1"),
                ("addrs", a),
            ])
            .finish();
        let r = h.post("/discovery/register", &form).await;
        assert_eq!(r.code(), 0, "{a}: {}", r.body);
    }
    let r = h.fetch("status=1").await;
    let stored: Vec<Value> = r.json()["data"]["instances"]["sh001"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["addrs"].clone())
        .collect();
    let want: Vec<Value> = accepted.iter().map(|a| json!([a])).collect();
    assert_eq!(stored, want);

    // Refused: control characters, over-length; nothing stored.
    let long = format!("grpc://{}:1", "h".repeat(300));
    for bad in ["grpc://h:1\n", "grpc://h\u{0}:1", "\t", long.as_str()] {
        let form = form_urlencoded::Serializer::new(String::new())
            .extend_pairs([
                ("zone", "sh001"),
                ("env", "dev"),
                ("appid", "demo.svc"),
                ("hostname", "bad"),
                ("status", "1"),
                ("addrs", bad),
            ])
            .finish();
        let r = h.post("/discovery/register", &form).await;
        assert_eq!(r.code(), -400, "{bad:?}: {}", r.body);
        assert!(r.body.contains("addrs"), "{}", r.body);
    }
    assert_eq!(h.api.registry().len(), accepted.len());
}

#[tokio::test]
async fn c09_invalid_metadata_is_a_bare_400() {
    let h = Harness::new();
    let r = h
        .post(
            "/discovery/register",
            "zone=z&env=dev&appid=a&hostname=h&status=1&addrs=x://h:1&metadata=bad",
        )
        .await;
    assert_eq!(r.body, r#"{"code":-400,"message":"-400","ttl":1}"#);
    let r = h
        .post(
            "/discovery/register",
            "zone=z&env=dev&appid=a&hostname=h&status=1&addrs=x://h:1&metadata=[1]",
        )
        .await;
    assert_eq!(r.code(), -400);
    assert_eq!(h.api.registry().len(), 0);
}

#[tokio::test]
async fn c10_metadata_values_are_stored_as_strings() {
    let h = Harness::new();
    h.register(
        "sh001",
        "h1",
        "&metadata=%7B%22weight%22%3A%2210%22%2C%22test%22%3A%22test%22%7D",
    )
    .await;
    h.register(
        "sh001",
        "h2",
        "&metadata=%7B%22weight%22%3A10%2C%22n%22%3Anull%7D",
    )
    .await;
    h.register("sh001", "h3", "&metadata=null").await;
    let d = h.fetch("status=1").await.json()["data"]["instances"]["sh001"].clone();
    assert_eq!(d[0]["metadata"], json!({"test":"test","weight":"10"}));
    assert_eq!(d[1]["metadata"], json!({"n":"","weight":"10"}));
    assert_eq!(d[2]["metadata"], json!({}));
}

#[tokio::test]
async fn c11_re_register_replaces_but_keeps_up_timestamp() {
    let h = Harness::new();
    h.register("sh001", "h1", "").await;
    let first = h.fetch("status=1").await.json()["data"]["instances"]["sh001"][0].clone();
    h.post(
        "/discovery/register",
        "zone=sh001&env=dev&appid=demo.svc&hostname=h1&status=1&addrs=grpc://new:1&addrs=http://new:2&version=v2&metadata=%7B%22a%22%3A%22b%22%7D",
    )
    .await;
    let second = h.fetch("status=1").await.json()["data"]["instances"]["sh001"][0].clone();
    assert_eq!(second["addrs"], json!(["grpc://new:1", "http://new:2"]));
    assert_eq!(second["version"], "v2");
    assert_eq!(second["metadata"], json!({"a":"b"}));
    assert_eq!(second["up_timestamp"], first["up_timestamp"]);
}

#[tokio::test]
async fn c12_older_dirty_timestamp_is_acknowledged_but_ignored() {
    let h = Harness::new();
    h.register("sh001", "h1", "").await;
    let r = h
        .post(
            "/discovery/register",
            "zone=sh001&env=dev&appid=demo.svc&hostname=h1&status=1&addrs=grpc://old:1&dirty_timestamp=5",
        )
        .await;
    assert_eq!(r.code(), 0);
    let ins = h.fetch("status=1").await.json()["data"]["instances"]["sh001"][0].clone();
    assert_eq!(ins["addrs"], json!(["grpc://h1:9000"]));
}

#[tokio::test]
async fn c13_one_hostname_in_two_zones_is_two_instances_and_each_bumps() {
    let h = Harness::new();
    h.register("sh001", "h1", "").await;
    let a = h.latest().await;
    h.register("sh002", "h1", "").await;
    let b = h.latest().await;
    assert!(b > a);
    let d = h.fetch("status=1").await.json()["data"]["instances"].clone();
    assert_eq!(d.as_object().unwrap().len(), 2);
}

#[tokio::test]
async fn c14_renew_returns_the_instance_without_bumping() {
    let h = Harness::new();
    h.register("sh001", "h1", "").await;
    let before = h.latest().await;
    let old = h.fetch("status=1").await.json()["data"]["instances"]["sh001"][0]["renew_timestamp"]
        .as_i64()
        .unwrap();
    let r = h
        .post(
            "/discovery/renew",
            "zone=sh001&env=dev&appid=demo.svc&hostname=h1",
        )
        .await;
    let j = r.json();
    assert_eq!(
        (j["code"].as_i64(), j["message"].as_str(), j["ttl"].as_i64()),
        (Some(0), Some("0"), Some(1))
    );
    assert_eq!(j["data"]["hostname"], "h1");
    assert!(j["data"]["renew_timestamp"].as_i64().unwrap() > old);
    assert_eq!(h.latest().await, before);
}

#[tokio::test]
async fn c15_renew_of_unknown_is_404_with_null_data() {
    let h = Harness::new();
    h.register("sh001", "h1", "").await;
    for form in [
        "zone=sh001&env=dev&appid=nope&hostname=h1",
        "zone=sh001&env=dev&appid=demo.svc&hostname=nope",
    ] {
        let r = h.post("/discovery/renew", form).await;
        assert_eq!(
            r.body,
            r#"{"code":-404,"message":"-404","ttl":1,"data":null}"#
        );
    }
}

#[tokio::test]
async fn c16_peer_renew_arbitrates_by_dirty_timestamp() {
    let h = Harness::new();
    h.register("sh001", "h1", "&dirty_timestamp=1000").await;
    let base = "/discovery/renew";
    let form = |d: i64| {
        format!(
            "zone=sh001&env=dev&appid=demo.svc&hostname=h1&replication=true&dirty_timestamp={d}"
        )
    };
    let r = h.post(base, &form(999)).await;
    assert_eq!(r.code(), -409);
    assert_eq!(r.json()["data"]["dirty_timestamp"], 1000);
    let r = h.post(base, &form(1001)).await;
    assert_eq!(r.code(), -404);
    assert_eq!(r.json()["data"]["dirty_timestamp"], 1000);
    assert_eq!(h.post(base, &form(1000)).await.code(), 0);
    // A client renew never arbitrates.
    let r = h
        .post(
            base,
            "zone=sh001&env=dev&appid=demo.svc&hostname=h1&dirty_timestamp=1",
        )
        .await;
    assert_eq!(r.code(), 0);
}

#[tokio::test]
async fn c17_cancel_then_again_then_fetch() {
    let h = Harness::new();
    h.register("sh001", "h1", "").await;
    let cancel = "zone=sh001&env=dev&appid=demo.svc&hostname=h1";
    assert_eq!(h.post("/discovery/cancel", cancel).await.code(), 0);
    assert_eq!(
        h.post("/discovery/cancel", cancel).await.body,
        r#"{"code":-404,"message":"-404","ttl":1}"#
    );
    assert_eq!(
        h.fetch("status=1").await.body,
        r#"{"code":-404,"message":"-404","ttl":1,"data":null}"#
    );
}

#[tokio::test]
async fn c18_cancelling_the_only_instance_of_a_zone_removes_the_zone() {
    let h = Harness::new();
    h.register("sh001", "h1", "").await;
    h.register("sh002", "h2", "").await;
    h.post(
        "/discovery/cancel",
        "zone=sh002&env=dev&appid=demo.svc&hostname=h2",
    )
    .await;
    let d = h.fetch("status=3").await.json()["data"]["instances"].clone();
    assert_eq!(d.as_object().unwrap().keys().collect::<Vec<_>>(), ["sh001"]);
}

#[tokio::test]
async fn c19_fetch_of_an_absent_zone() {
    let h = Harness::new();
    h.register("sh001", "h1", "").await;
    let latest = h.latest().await;
    let r = h.fetch("status=1&zone=sh009").await;
    assert_eq!(
        r.body,
        format!(
            r#"{{"code":-404,"message":"-404","ttl":1,"data":{{"instances":{{}},"latest_timestamp":{latest}}}}}"#
        )
    );
}

#[tokio::test]
async fn c20_status_mask_and_emptied_zones() {
    let h = Harness::new();
    h.register("sh001", "up", "").await;
    h.post(
        "/discovery/register",
        "zone=sh002&env=dev&appid=demo.svc&hostname=wait&status=2&addrs=grpc://w:1",
    )
    .await;
    let up = h.fetch("status=1").await.json()["data"]["instances"].clone();
    assert_eq!(up["sh002"], json!([]));
    assert_eq!(up["sh001"].as_array().unwrap().len(), 1);
    let wait = h.fetch("status=2").await.json()["data"]["instances"].clone();
    assert_eq!(wait["sh001"], json!([]));
    assert_eq!(wait["sh002"][0]["hostname"], "wait");
    let both = h.fetch("status=3").await.json()["data"]["instances"].clone();
    assert_eq!(
        both["sh001"].as_array().unwrap().len() + both["sh002"].as_array().unwrap().len(),
        2
    );
    let r = h.fetch("").await;
    assert_eq!(r.code(), -400);
    assert!(r.body.contains("'status'"));
}

#[tokio::test]
async fn c21_zones_and_hostnames_come_sorted() {
    let h = Harness::new();
    for (z, host) in [
        ("sh002", "b"),
        ("sh001", "c"),
        ("sh001", "a"),
        ("sh002", "a"),
    ] {
        h.register(z, host, "").await;
    }
    let r = h.fetch("status=1").await;
    let d: Value = r.json()["data"]["instances"].clone();
    let zones: Vec<_> = d.as_object().unwrap().keys().cloned().collect();
    assert_eq!(zones, ["sh001", "sh002"]);
    assert!(r.body.find(r#""sh001""#) < r.body.find(r#""sh002""#));
    let hosts: Vec<_> = d["sh001"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["hostname"].as_str().unwrap())
        .collect();
    assert_eq!(hosts, ["a", "c"]);
}

#[tokio::test]
async fn c22_fetchs_omits_unknown_apps() {
    let h = Harness::new();
    h.register("sh001", "h1", "").await;
    h.post(
        "/discovery/register",
        "zone=sh001&env=dev&appid=other&hostname=o&status=1&addrs=x://o:1",
    )
    .await;
    let r = h
        .get("/discovery/fetchs?env=dev&appid=demo.svc&appid=gone&appid=other&status=1")
        .await;
    assert_eq!(r.code(), 0);
    let keys: Vec<_> = r.json()["data"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(keys, ["demo.svc", "other"]);
    let r = h.get("/discovery/fetchs?env=dev&appid=gone&status=1").await;
    assert_eq!(r.body, r#"{"code":0,"message":"0","ttl":1,"data":{}}"#);
}

#[tokio::test]
async fn c23_fetch_all_lists_every_env_zone_and_status() {
    let h = Harness::new();
    assert_eq!(
        h.get("/discovery/fetch/all").await.body,
        r#"{"code":0,"message":"0","ttl":1,"data":{}}"#
    );
    h.register("sh001", "h1", "").await;
    h.post(
        "/discovery/register",
        "zone=sh002&env=prod&appid=demo.svc&hostname=p&status=2&addrs=x://p:1",
    )
    .await;
    let d = h.get("/discovery/fetch/all").await.json()["data"].clone();
    let list = d["demo.svc"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(
        (list[0]["env"].as_str(), list[1]["env"].as_str()),
        (Some("dev"), Some("prod"))
    );
}

#[tokio::test]
async fn c24_no_scheduler_no_key() {
    let h = Harness::new();
    h.register("sh001", "h1", "").await;
    assert!(!h.fetch("status=1").await.body.contains("scheduler"));
}

#[tokio::test]
async fn c24_a_scheduler_is_served_with_fetch_and_polls() {
    let h = Harness::new();
    h.register("sh001", "h1", "").await;
    let s =
        naming::Scheduler::from_json(r#"{"clients":{"sh001":{"zones":{"sh001":{"weight":3}}}}}"#)
            .unwrap();
    h.api.registry().set_scheduler(
        &discovery_server::registry::AppKey::new("dev", "demo.svc"),
        Some(s),
        1,
    );
    let r = h.fetch("status=1").await;
    assert!(r.body.contains(r#""scheduler":{"clients":{"sh001":{"zones":{"sh001":{"weight":3}}}},"remark":""},"latest_timestamp""#), "{}", r.body);
    let r = h
        .get("/discovery/polls?env=dev&hostname=c&appid=demo.svc&latest_timestamp=0")
        .await;
    assert!(r.body.contains(r#""scheduler":{"clients""#));
    assert!(
        !h.get("/discovery/fetch/all")
            .await
            .body
            .contains("scheduler")
    );
}

#[tokio::test]
async fn c25_c26_polls_at_zero_answers_at_once_in_map_shape() {
    let h = Harness::new();
    h.register("sh001", "h1", "").await;
    let r = h
        .get("/discovery/polls?env=dev&hostname=c&appid=demo.svc&appid=gone&appid=gone2&latest_timestamp=0&latest_timestamp=0&latest_timestamp=0")
        .await;
    assert!(
        r.body
            .starts_with(r#"{"code":0,"data":{"demo.svc":{"instances":{"sh001":[{"#),
        "{}",
        r.body
    );
    assert!(
        r.body
            .ends_with(r#"},"error":{"-404":["gone","gone2"]},"message":"0"}"#),
        "{}",
        r.body
    );
    let r = h
        .get("/discovery/polls?env=dev&hostname=c&appid=demo.svc&latest_timestamp=0")
        .await;
    assert!(
        r.body
            .ends_with(r#"},"error":{"-404":null},"message":"0"}"#),
        "{}",
        r.body
    );
}

#[tokio::test]
async fn c27_polls_with_mismatched_timestamps_or_no_hostname() {
    let h = Harness::new();
    let r = h
        .get("/discovery/polls?env=dev&hostname=c&appid=a&appid=b&latest_timestamp=0")
        .await;
    assert_eq!(r.body, r#"{"code":-400,"message":"-400","ttl":1}"#);
    let r = h
        .get("/discovery/polls?env=dev&appid=a&latest_timestamp=0")
        .await;
    assert_eq!(r.code(), -400);
    assert!(r.body.contains("'hostname'"));
}

#[tokio::test(start_paused = true)]
async fn c29_no_header_holds_30s_under_a_40s_timeout() {
    let h = Harness::new();
    h.register("sh001", "h1", "").await;
    let latest = h.latest().await;
    let start = tokio::time::Instant::now();
    let r = h
        .get(&format!(
            "/discovery/polls?env=dev&hostname=c&appid=demo.svc&latest_timestamp={latest}"
        ))
        .await;
    assert_eq!(r.body, r#"{"code":-304,"message":"-304","ttl":1}"#);
    assert_eq!(start.elapsed().as_secs(), 30);
}

#[tokio::test(start_paused = true)]
async fn c28_header_shortens_the_hold() {
    let h = Harness::new();
    h.register("sh001", "h1", "").await;
    let latest = h.latest().await;
    let uri =
        format!("/discovery/polls?env=dev&hostname=c&appid=demo.svc&latest_timestamp={latest}");
    for (header, expect_ms) in [
        ("1020", 1000),
        ("2000", 1980),
        ("15", 15),
        ("40000", 30_000),
        ("abc", 30_000),
        ("-5", 30_000),
    ] {
        let start = tokio::time::Instant::now();
        let r = h
            .send(
                Request::get(&uri)
                    .header("x1-bmspy-timeout", header)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(r.code(), -304);
        assert_eq!(start.elapsed().as_millis(), expect_ms, "header {header}");
    }
}

#[tokio::test(start_paused = true)]
async fn c28_server_timeout_and_write_timeout_cap_the_hold() {
    let h = Harness::from_toml("[httpServer]\ntimeout = \"1s\"\n");
    h.register("sh001", "h1", "").await;
    let latest = h.latest().await;
    let uri =
        format!("/discovery/poll?env=dev&hostname=c&appid=demo.svc&latest_timestamp={latest}");
    let start = tokio::time::Instant::now();
    assert_eq!(h.get(&uri).await.code(), -304);
    assert_eq!(start.elapsed().as_millis(), 1000);

    let h = Harness::from_toml("[httpServer]\nwriteTimeout = \"5s\"\n");
    h.register("sh001", "h1", "").await;
    let latest = h.latest().await;
    let uri =
        format!("/discovery/poll?env=dev&hostname=c&appid=demo.svc&latest_timestamp={latest}");
    let start = tokio::time::Instant::now();
    assert_eq!(h.get(&uri).await.code(), -304);
    assert_eq!(start.elapsed().as_millis(), 4000);
}

#[tokio::test(start_paused = true)]
async fn c36_c37_all_waiting_app_answers_at_hold_end_with_no_up_instances() {
    let h = Harness::new();
    h.post(
        "/discovery/register",
        "zone=sh001&env=dev&appid=demo.svc&hostname=w&status=2&addrs=grpc://w:1",
    )
    .await;
    let start = tokio::time::Instant::now();
    let r = h
        .send(
            Request::get("/discovery/polls?env=dev&hostname=c&appid=demo.svc&latest_timestamp=0")
                .header("x1-bmspy-timeout", "1020")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(
        start.elapsed().as_millis(),
        1000,
        "held, not answered at once"
    );
    let j = r.json();
    assert_eq!(j["code"], 0);
    assert_eq!(j["data"]["demo.svc"]["instances"]["sh001"], json!([]));
    assert!(j["data"]["demo.svc"]["latest_timestamp"].as_i64().unwrap() > 0);
}

#[tokio::test]
async fn c38_c39_poll_envelope_and_miss() {
    let h = Harness::new();
    let r = h
        .get("/discovery/poll?env=dev&hostname=c&appid=gone&latest_timestamp=0")
        .await;
    assert_eq!(r.body, r#"{"code":-404,"message":"gone not found"}"#);
    h.register("sh001", "h1", "").await;
    let r = h
        .get("/discovery/poll?env=dev&hostname=c&appid=demo.svc&appid=ignored&latest_timestamp=0&latest_timestamp=0")
        .await;
    assert!(
        r.body
            .starts_with(r#"{"code":0,"message":"0","ttl":1,"data":{"instances":{"sh001":[{"#),
        "{}",
        r.body
    );
}

#[tokio::test]
async fn c40_set_status_and_up_timestamp() {
    let h = Harness::new();
    h.register("sh001", "h1", "").await;
    let set = |s: &str| {
        format!("zone=sh001&env=dev&appid=demo.svc&hostname=h1&status={s}&set_timestamp=1234")
    };
    assert_eq!(h.post("/discovery/set", &set("2")).await.code(), 0);
    let w = h.fetch("status=2").await.json()["data"]["instances"]["sh001"].clone();
    assert_eq!(w[0]["hostname"], "h1");
    assert_eq!(h.post("/discovery/set", &set("1")).await.code(), 0);
    let up = h.fetch("status=1").await.json()["data"]["instances"]["sh001"][0].clone();
    assert_eq!(up["up_timestamp"], 1234);
}

#[tokio::test]
async fn c41_set_metadata_merges() {
    let h = Harness::new();
    h.register("sh001", "h1", "&metadata=%7B%22weight%22%3A%2210%22%7D")
        .await;
    let r = h
        .post(
            "/discovery/set",
            "zone=sh001&env=dev&appid=demo.svc&hostname=h1&metadata=%7B%22a%22%3A%221%22%7D",
        )
        .await;
    assert_eq!(r.code(), 0);
    let md = h.fetch("status=1").await.json()["data"]["instances"]["sh001"][0]["metadata"].clone();
    assert_eq!(md, json!({"a":"1","weight":"10"}));
}

#[tokio::test]
async fn c42_set_with_an_unknown_hostname_changes_nothing() {
    let h = Harness::new();
    h.register("sh001", "h1", "").await;
    let before = h.latest().await;
    let r = h
        .post(
            "/discovery/set",
            "zone=sh001&env=dev&appid=demo.svc&hostname=h1&hostname=ghost&status=2&status=2",
        )
        .await;
    assert_eq!(r.code(), -400);
    assert!(r.body.contains("ghost"), "{}", r.body);
    assert_eq!(
        h.fetch("status=1").await.json()["data"]["instances"]["sh001"][0]["status"],
        1
    );
    assert_eq!(h.latest().await, before);
}

#[tokio::test]
async fn c43_set_argument_errors() {
    let h = Harness::new();
    h.register("sh001", "a", "").await;
    h.register("sh001", "b", "").await;
    for form in [
        "hostname=a&hostname=b&status=2",
        "hostname=a&status=3",
        "status=2",
        "hostname=a&metadata=%5B%5D",
    ] {
        let r = h
            .post(
                "/discovery/set",
                &format!("zone=sh001&env=dev&appid=demo.svc&{form}"),
            )
            .await;
        assert_eq!(r.code(), -400, "{form}: {}", r.body);
    }
}

#[tokio::test]
async fn c44_set_stamps_dirty_and_latest() {
    let h = Harness::new();
    h.register("sh001", "h1", "").await;
    h.post(
        "/discovery/set",
        "zone=sh001&env=dev&appid=demo.svc&hostname=h1&status=1&set_timestamp=4242",
    )
    .await;
    let i = h.fetch("status=1").await.json()["data"]["instances"]["sh001"][0].clone();
    assert_eq!(
        (
            i["dirty_timestamp"].as_i64(),
            i["latest_timestamp"].as_i64()
        ),
        (Some(4242), Some(4242))
    );
}

#[tokio::test]
async fn c45_nodes_lists_self_and_local_zone() {
    let h = Harness::from_toml(
        "nodes = [\"127.0.0.2:7171\", \"127.0.0.1:7171\"]\n[env]\nzone = \"sh001\"\n[httpServer]\naddr = \"127.0.0.1:7171\"\n",
    );
    let r = h.get("/discovery/nodes").await;
    assert_eq!(
        r.body,
        r#"{"code":0,"message":"0","ttl":1,"data":[{"addr":"127.0.0.1:7171","status":0,"zone":"sh001"},{"addr":"127.0.0.2:7171","status":0,"zone":"sh001"}]}"#
    );
}

#[tokio::test]
async fn c49_init_protect_gates_reads_but_not_writes() {
    let h = Harness::from_toml("enableprotect = true\n");
    h.api.set_phase(discovery_server::node::Phase::Protected);
    h.register("sh001", "h1", "").await;
    for uri in [
        "/discovery/fetch?env=dev&appid=demo.svc&status=1",
        "/discovery/fetchs?env=dev&appid=demo.svc&status=1",
        "/discovery/fetch/all",
        "/discovery/polls?env=dev&hostname=c&appid=demo.svc&latest_timestamp=0",
        "/discovery/poll?env=dev&hostname=c&appid=demo.svc",
        "/discovery/nodes",
    ] {
        let r = h.get(uri).await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, r#"{"code":-500,"message":"-500","ttl":1}"#),
            "{uri}"
        );
    }
    assert_eq!(h.get("/readyz").await.status, 503);
    assert_eq!(h.get("/healthz").await.status, 200);
    h.api.set_phase(discovery_server::node::Phase::Syncing);
    assert_eq!(
        h.get("/discovery/fetch/all").await.code(),
        0,
        "sync peers may read"
    );
    assert_eq!(h.fetch("status=1").await.code(), -500);
}

#[tokio::test]
async fn limits_are_enforced_and_named() {
    let h = Harness::from_toml(
        "[limits]\nmax_addrs = 2\nmax_field_len = 8\nmax_appids_per_poll = 2\nmax_body_bytes = 512\nmax_metadata_keys = 1\n",
    );
    let r = h
        .post(
            "/discovery/register",
            "zone=z&env=dev&appid=a&hostname=h&status=1&addrs=x://a:1&addrs=x://b:1&addrs=x://c:1",
        )
        .await;
    assert!(r.body.contains("limits.max_addrs"), "{}", r.body);
    let r = h
        .post(
            "/discovery/register",
            "zone=z&env=dev&appid=a&hostname=waytoolonghost&status=1&addrs=x://a:1",
        )
        .await;
    assert!(r.body.contains("limits.max_field_len"), "{}", r.body);
    let r = h
        .get("/discovery/fetchs?env=dev&appid=a&appid=b&appid=c&status=1")
        .await;
    assert!(r.body.contains("limits.max_appids_per_poll"), "{}", r.body);
    let r = h.post("/discovery/register", &"x=".repeat(400)).await;
    assert!(r.body.contains("limits.max_body_bytes"), "{}", r.body);
    let r = h
        .post("/discovery/register", "zone=z&env=dev&appid=a&hostname=h&status=1&addrs=x://a:1&metadata=%7B%22a%22%3A%221%22%2C%22b%22%3A%222%22%7D")
        .await;
    assert!(r.body.contains("limits.max_metadata_keys"), "{}", r.body);
    assert_eq!(h.api.registry().len(), 0);
}

#[tokio::test]
async fn peer_register_splits_comma_joined_addrs_and_keeps_reg_timestamp() {
    let h = Harness::new();
    let r = h
        .post(
            "/discovery/register",
            "zone=sh001&env=dev&appid=demo.svc&hostname=h1&status=1&addrs=grpc://a:1,http://a:2&replication=true&reg_timestamp=77",
        )
        .await;
    assert_eq!(r.code(), 0);
    let i = h.fetch("status=1").await.json()["data"]["instances"]["sh001"][0].clone();
    assert_eq!(i["addrs"], json!(["grpc://a:1", "http://a:2"]));
    assert_eq!(i["reg_timestamp"], 77);
    // A client's comma-joined value is one opaque address, as in Go.
    let r = h
        .post(
            "/discovery/register",
            "zone=sh001&env=dev&appid=demo.svc&hostname=h2&status=1&addrs=grpc://a:1,http://a:2&reg_timestamp=77",
        )
        .await;
    assert_eq!(r.code(), 0, "{}", r.body);
    let i = h.fetch("status=1").await.json()["data"]["instances"]["sh001"][1].clone();
    assert_eq!(i["addrs"], json!(["grpc://a:1,http://a:2"]));
}

#[tokio::test]
async fn addrs_of_any_shape_are_stored_as_sent() {
    // The Go original checks no syntax: SDKs register what they have.
    let h = Harness::new();
    for good in [
        "h:1",
        "grpc://h",
        "grpc://:1",
        "grpc://h:99999",
        "://h:1",
        "1x://h:1",
        "grpc://h:port",
        "grpc://10.0.0.1:9000",
        "http://[::1]:80",
        "grpc://127.0.0.1:9000?isSecure=false",
        "tcp+tls://h.example:443",
    ] {
        let r = h
            .post(
                "/discovery/register",
                &format!(
                    "zone=sh001&env=dev&appid=demo.svc&hostname=h&status=1&addrs={}",
                    urlenc(good)
                ),
            )
            .await;
        assert_eq!(r.code(), 0, "{good}: {}", r.body);
        let r = h.fetch("status=1").await;
        assert_eq!(
            r.json()["data"]["instances"]["sh001"][0]["addrs"],
            json!([good])
        );
    }
}

fn urlenc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn the_instance_cap_refuses_new_keys_only() {
    let h = Harness::from_toml("[limits]\nmax_instances = 2\n");
    h.register("sh001", "h1", "").await;
    h.register("sh001", "h2", "").await;
    let r = h
        .post(
            "/discovery/register",
            "zone=sh001&env=dev&appid=demo.svc&hostname=h3&status=1&addrs=grpc://h3:1",
        )
        .await;
    assert_eq!(r.code(), -400);
    assert!(r.body.contains("limits.max_instances"), "{}", r.body);
    // Re-registering an existing instance is still allowed.
    h.register("sh001", "h1", "").await;
    assert_eq!(h.api.registry().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn beyond_max_pollers_a_poll_is_refused_at_once() {
    let h = Harness::from_toml("[limits]\nmax_pollers = 1\n");
    h.register("sh001", "h1", "").await;
    let latest = h.latest().await;
    let uri =
        format!("/discovery/polls?env=dev&hostname=c&appid=demo.svc&latest_timestamp={latest}");
    let router = h.router.clone();
    let held_uri = uri.clone();
    let held = tokio::spawn(async move {
        use tower::ServiceExt;
        router
            .oneshot(Request::get(held_uri).body(Body::empty()).unwrap())
            .await
            .unwrap()
    });
    while h.api.registry().parked_polls() == 0 {
        tokio::task::yield_now().await;
    }
    let start = tokio::time::Instant::now();
    let r = h.get(&uri).await;
    assert_eq!(
        start.elapsed(),
        std::time::Duration::ZERO,
        "answered at once, not held"
    );
    assert_eq!(r.code(), -400);
    assert!(r.body.contains("limits.max_pollers"), "{}", r.body);
    held.abort();
}
