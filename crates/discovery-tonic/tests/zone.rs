//! Filter and zone scheduling tables.

mod support;

use std::collections::BTreeMap;

use discovery_tonic::pipeline::{apply, filter, schedule, select};
use naming::{BuildOptions, Instance, InstancesInfo, Scheduler};

fn ins(zone: &str, host: &str, scheme: &str, cluster: &str) -> Instance {
    let mut metadata = BTreeMap::new();
    if !cluster.is_empty() {
        metadata.insert("cluster".to_string(), cluster.to_string());
    }
    Instance {
        zone: zone.into(),
        hostname: host.into(),
        addrs: vec![format!("{scheme}://{host}:9000")],
        metadata,
        ..Default::default()
    }
}

fn hosts(list: &[Instance]) -> Vec<&str> {
    list.iter().map(|i| i.hostname.as_str()).collect()
}

fn filter_input() -> BTreeMap<String, Vec<Instance>> {
    BTreeMap::from([
        (
            "sh001".to_string(),
            vec![
                ins("sh001", "g1", "grpc", "c1"),
                ins("sh001", "h1", "http", "c1"),
                ins("sh001", "g2", "grpc", "c2"),
            ],
        ),
        (
            "sh002".to_string(),
            vec![
                ins("sh002", "g3", "grpc", "c3"),
                ins("sh002", "z3", "zk", "c3"),
            ],
        ),
    ])
}

#[test]
fn filter_table() {
    let mut a = filter_input();
    filter(&mut a, "grpc", &["c1".into(), "c3".into()]);
    assert_eq!(hosts(&a["sh001"]), ["g1"]);
    assert_eq!(hosts(&a["sh002"]), ["g3"]);

    let mut b = filter_input();
    filter(&mut b, "grpc", &[]);
    assert_eq!(hosts(&b["sh001"]), ["g1", "g2"]);
    assert_eq!(hosts(&b["sh002"]), ["g3"]);

    let mut c = filter_input();
    filter(&mut c, "grpc", &["nope".into()]);
    assert!(
        c["sh001"].is_empty() && c["sh002"].is_empty(),
        "emptied zones remain"
    );
}

fn zones(n1: usize, n2: usize) -> BTreeMap<String, Vec<Instance>> {
    let mk = |zone: &str, n| {
        (0..n)
            .map(|i| ins(zone, &format!("{zone}-{i:02}"), "grpc", ""))
            .collect()
    };
    BTreeMap::from([
        ("sh001".to_string(), mk("sh001", n1)),
        ("sh002".to_string(), mk("sh002", n2)),
    ])
}

fn scheduler(weights: &[(&str, i64)]) -> Scheduler {
    let dst: Vec<String> = weights
        .iter()
        .map(|(z, w)| format!("\"{z}\":{w}"))
        .collect();
    Scheduler::from_json(&format!(
        "[{{\"src\":\"sh001\",\"dst\":{{{}}}}}]",
        dst.join(",")
    ))
    .unwrap()
}

/// Counts per origin zone of the client zone's list after scheduling.
fn scheduled(weights: &[(&str, i64)], n1: usize, n2: usize, subset: usize) -> (usize, usize) {
    let mut z = zones(n1, n2);
    schedule(
        &mut z,
        Some(&scheduler(weights)),
        "sh001",
        subset,
        "demo-client-1",
    );
    let list = &z["sh001"];
    let from = |zone: &str| list.iter().filter(|i| i.zone == zone).count();
    (from("sh001"), from("sh002"))
}

#[test]
fn scheduling_table() {
    assert_eq!(scheduled(&[("sh001", 10), ("sh002", 20)], 3, 2, 50), (1, 2));
    assert_eq!(
        scheduled(&[("sh001", 10), ("sh002", 20)], 30, 30, 50),
        (15, 30)
    );
    assert_eq!(
        scheduled(&[("sh001", 1), ("sh002", 30)], 30, 30, 50),
        (1, 30)
    );
    assert_eq!(
        scheduled(&[("sh001", 1), ("sh002", 30)], 30, 0, 50),
        (30, 0)
    );
    assert_eq!(scheduled(&[("sh002", 30)], 30, 30, 50), (0, 30));
}

#[test]
fn bottleneck_above_subset_is_capped() {
    // sh002 is the bottleneck (100/20 < 100/10) with more than 50 instances:
    // its score becomes 50/20, so sh001 takes 25 and sh002 50.
    assert_eq!(
        scheduled(&[("sh001", 10), ("sh002", 20)], 100, 100, 50),
        (25, 50)
    );
    // Without subsetting the counts are used as they are.
    assert_eq!(
        scheduled(&[("sh001", 10), ("sh002", 20)], 100, 100, 0),
        (50, 100)
    );
}

#[test]
fn zero_and_negative_weights_do_not_crash() {
    assert_eq!(scheduled(&[("sh001", 0), ("sh002", 20)], 3, 2, 50), (0, 2));
    assert_eq!(
        scheduled(&[("sh001", -5), ("sh002", 0)], 3, 2, 50),
        (3, 0),
        "nothing usable: unchanged"
    );
}

#[test]
fn entries_listing_only_empty_zones_change_nothing() {
    let mut z = zones(3, 0);
    schedule(&mut z, Some(&scheduler(&[("sh002", 10)])), "sh001", 50, "c");
    assert_eq!(z["sh001"].len(), 3);
    // No entry for the client zone, or no scheduler at all: unchanged too.
    let mut z = zones(3, 2);
    schedule(&mut z, Some(&scheduler(&[("sh002", 10)])), "sh009", 50, "c");
    schedule(&mut z, None, "sh001", 50, "c");
    assert_eq!((z["sh001"].len(), z["sh002"].len()), (3, 2));
}

#[test]
fn apply_and_select() {
    let info = InstancesInfo {
        instances: zones(30, 30),
        scheduler: Some(scheduler(&[("sh001", 10), ("sh002", 20)])),
        latest_timestamp: 7,
    };
    let opts = BuildOptions {
        subset: 20,
        ..Default::default()
    };
    let out = apply(&info, &opts, "sh001", "demo-client-1");
    // Bottleneck sh002 (30/20) is above subset 20 → score 20/20: sh001 takes
    // 10, sh002 20; then the client zone's 30 are subset to 20.
    assert_eq!(out.instances["sh001"].len(), 20);
    assert_eq!(out.instances["sh002"].len(), 20);
    assert_eq!(out.latest_timestamp, 7);
    assert_eq!(select(&out, Some("sh001")).len(), 20);
    // The zone in the options wins over the SDK's.
    let opts = BuildOptions {
        subset: 0,
        client_zone: Some("sh002".into()),
        ..Default::default()
    };
    let out = apply(&info, &opts, "sh001", "c");
    assert_eq!(
        out.instances["sh001"].len(),
        30,
        "sh002 has no scheduler entry"
    );
    // An empty client zone falls back to every zone.
    let mut empty = info.clone();
    empty.instances.get_mut("sh001").unwrap().clear();
    assert_eq!(select(&empty, Some("sh001")).len(), 30);
    assert_eq!(select(&info, None).len(), 60);
}

mod balancer {
    //! The balancer runs the pipeline on the resolver's raw snapshots.

    use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

    use super::support::{Behaviour, TestServer, fake, hello, wait_ready};
    use demo_proto::helloworld::greeter_client::GreeterClient;
    use discovery_tonic::{Balanced, ClientConfig, Resolvers};
    use naming::{Builder, Instance, InstancesInfo, Resolution, Scheduler};

    fn instance(zone: &str, addr: SocketAddr, cluster: &str) -> Instance {
        let mut metadata = BTreeMap::new();
        metadata.insert("cluster".to_string(), cluster.to_string());
        Instance {
            zone: zone.into(),
            hostname: addr.to_string(),
            addrs: vec![format!("http://{addr}"), format!("grpc://{addr}")],
            metadata,
            ..Default::default()
        }
    }

    fn snapshot(zones: &[(&str, Vec<Instance>)], scheduler: Option<Scheduler>) -> Resolution {
        Resolution::Found(Arc::new(InstancesInfo {
            instances: zones
                .iter()
                .map(|(z, l)| (z.to_string(), l.clone()))
                .collect(),
            scheduler,
            latest_timestamp: 1,
        }))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn clusters_zones_and_schedulers_steer_traffic() {
        let a = TestServer::start(Behaviour::default()); // sh001, c1
        let b = TestServer::start(Behaviour::default()); // sh001, c2
        let c = TestServer::start(Behaviour::default()); // sh002, c1
        let zones = vec![
            (
                "sh001",
                vec![
                    instance("sh001", a.addr, "c1"),
                    instance("sh001", b.addr, "c2"),
                ],
            ),
            ("sh002", vec![instance("sh002", c.addr, "c1")]),
        ];
        let (resolver, tx) = fake(snapshot(&zones, None));
        let config = ClientConfig::default().zone("sh001").cluster("c1");
        let channel = Balanced::new(resolver, &config).unwrap();
        wait_ready(&channel, 1).await;
        let mut client = GreeterClient::new(channel.clone());
        for _ in 0..20 {
            client.say_hello(hello()).await.unwrap();
        }
        // Cluster c1 of the client zone only.
        assert_eq!((a.hits(), b.hits(), c.hits()), (20, 0, 0));

        // A scheduler sending sh001's clients to sh002 only.
        let s = Scheduler::from_json(r#"[{"src":"sh001","dst":{"sh002":1}}]"#).unwrap();
        tx.send_replace(snapshot(&zones, Some(s)));
        crate::support::eventually(
            std::time::Duration::from_secs(5),
            "the scheduler moved the client to sh002",
            || channel.ready_endpoints() == [c.addr.to_string()],
        )
        .await;
        for _ in 0..20 {
            client.say_hello(hello()).await.unwrap();
        }
        assert_eq!((a.hits(), b.hits(), c.hits()), (20, 0, 20));
    }

    #[tokio::test]
    async fn targets_subset_and_direct_skips_the_pipeline() {
        // 80 distinct addresses nothing listens on: bound together, then
        // closed.
        let listeners: Vec<_> = (0..80)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
        drop(listeners);
        let list: Vec<Instance> = addrs.iter().map(|a| instance("sh001", *a, "")).collect();
        let (resolver, _tx) = fake(snapshot(&[("sh001", list)], None));
        struct One(std::sync::Mutex<Option<Box<dyn naming::Resolver>>>);
        impl Builder for One {
            fn scheme(&self) -> &str {
                "discovery"
            }
            fn build(
                &self,
                _: &str,
                _: naming::BuildOptions,
            ) -> Result<Box<dyn naming::Resolver>, naming::Error> {
                Ok(self.0.lock().unwrap().take().unwrap())
            }
        }
        let resolvers = Resolvers::new().with(Arc::new(One(std::sync::Mutex::new(Some(resolver)))));
        let config = ClientConfig::default().client_id("demo-client-1");
        let channel = Balanced::from_target(
            "discovery://default/demo.service?subset=30",
            &resolvers,
            &config,
        )
        .unwrap();
        // Nothing listens on those addresses: once every first dial has
        // failed, the subset shows in the error.
        until_unreachable(&channel, "(30 endpoints unreachable)").await;

        let direct = addrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let channel =
            Balanced::from_target(&format!("direct://default/{direct}"), &resolvers, &config)
                .unwrap();
        until_unreachable(&channel, "(80 endpoints unreachable)").await;
    }

    /// Calls until the error names `count` (once every first dial has
    /// failed), at most 10 s.
    async fn until_unreachable(channel: &Balanced, count: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let err = GreeterClient::new(channel.clone())
                .say_hello(hello())
                .await
                .unwrap_err();
            if err.message().contains(count) {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "{err:?}");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}
