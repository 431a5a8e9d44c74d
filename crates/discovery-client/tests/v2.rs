//! The kratos v2-style facade.

mod common;

use std::time::Duration;

use common::{addr_of, client, server};
use discovery_client::v2::{Registry, ServiceInstance};
use naming::Error;

#[tokio::test]
async fn register_get_watch_deregister() {
    let s = server("poll_hold = \"30s\"").await;
    let provider = Registry::new(client(&[addr_of(&s)]));
    let consumer = Registry::new(client(&[addr_of(&s)]));

    let err = consumer.get_service("demo.v2").await.unwrap_err();
    assert!(
        matches!(err, Error::NotFound { ref env, .. } if env == "dev"),
        "{err:?}"
    );
    let mut watcher = consumer.watch("demo.v2").unwrap();

    let me = ServiceInstance {
        name: "demo.v2".into(),
        version: "v2.0.0".into(),
        metadata: [("weight".to_string(), "20".to_string())].into(),
        endpoints: vec![
            "grpc://127.0.0.1:9000?isSecure=false".into(),
            "http://127.0.0.1:8000?isSecure=false".into(),
        ],
        ..Default::default()
    };
    provider.register(&me).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(1), watcher.next())
        .await
        .expect("first list within 1 s")
        .unwrap();
    assert_eq!(first.len(), 1);
    let got = &first[0];
    assert_eq!(got.id, provider.discovery().config().hostname);
    assert_eq!(got.name, "demo.v2");
    assert_eq!(got.version, "v2.0.0");
    assert_eq!(got.endpoints, me.endpoints);
    assert_eq!(got.metadata["weight"], "20");
    assert_eq!(got.metadata["zone"], "zone01");
    assert_eq!(got.metadata["env"], "dev");

    let listed = consumer.get_service("demo.v2").await.unwrap();
    assert_eq!(listed, first);

    provider.deregister(&me).await.unwrap();
    let after = tokio::time::timeout(Duration::from_secs(1), watcher.next())
        .await
        .expect("change within 1 s")
        .unwrap();
    assert!(after.is_empty(), "{after:?}");
    // Deregistering again is a no-op.
    provider.deregister(&me).await.unwrap();
    watcher.stop();
    consumer.discovery().close().await.unwrap();
    provider.discovery().close().await.unwrap();
    s.shutdown().await;
}
