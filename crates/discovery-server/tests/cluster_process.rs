//! `kill -9` and restart of a node in a 3-process cluster: acknowledged writes survive, the others drop the dead node after its
//! lease, and it resyncs everything when it returns.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use testkit::{FAST, Layout, ProcessTopology};

use testkit::http::post_form as post;

use testkit::http::try_get_json as get;

async fn hosts(base: &str) -> BTreeSet<String> {
    let Some(v) = get(base, "/discovery/fetch?env=dev&appid=demo.svc&status=3").await else {
        return BTreeSet::new();
    };
    v["data"]["instances"]["sh001"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| i["hostname"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

async fn node_addrs(base: &str) -> Vec<String> {
    get(base, "/discovery/nodes")
        .await
        .and_then(|v| v["data"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|n| n["addr"].as_str().unwrap().to_string())
        .collect()
}

fn reg(host: &str) -> String {
    format!("zone=sh001&env=dev&appid=demo.svc&hostname={host}&status=1&addrs=grpc://{host}:1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c52_kill_9_and_restart_loses_nothing() {
    let mut topo = ProcessTopology::start(&Layout::zones(&[("sh001", 3)]).toml(FAST))
        .await
        .unwrap();
    topo.wait_ready().await;
    let (u0, u1, u2) = (topo.url(0), topo.url(1), topo.url(2));

    // Writes acknowledged by node 0, then node 0 dies at once.
    let mut expected = BTreeSet::new();
    for i in 0..20 {
        let h = format!("a{i}");
        assert_eq!(post(&u0, "/discovery/register", &reg(&h)).await["code"], 0);
        expected.insert(h);
    }
    topo.kill(0).await;
    let killed = Instant::now();

    // Clients keep renewing through a live node (as the SDK fails over).
    let renewer = {
        let u1 = u1.clone();
        let names: Vec<String> = (0..20)
            .map(|i| format!("a{i}"))
            .chain((0..10).map(|i| format!("b{i}")))
            .collect();
        tokio::spawn(async move {
            loop {
                for h in &names {
                    let r = post(
                        &u1,
                        "/discovery/renew",
                        &format!("zone=sh001&env=dev&appid=demo.svc&hostname={h}"),
                    )
                    .await;
                    if r["code"] == -404 {
                        post(&u1, "/discovery/register", &reg(h)).await;
                    }
                }
                // Fixed: the renew period of this stand-in client.
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    let union: BTreeSet<String> = hosts(&u1).await.union(&hosts(&u2).await).cloned().collect();
    assert!(
        expected.is_subset(&union),
        "every acknowledged write survives the crash"
    );

    // Writes continue on the survivors.
    for i in 0..10 {
        let h = format!("b{i}");
        assert_eq!(post(&u2, "/discovery/register", &reg(&h)).await["code"], 0);
        expected.insert(h);
    }

    // The survivors converge and drop the dead node after its lease.
    let dead = topo.addr(0).to_string();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let dropped =
            !node_addrs(&u1).await.contains(&dead) && !node_addrs(&u2).await.contains(&dead);
        let converged = hosts(&u1).await == expected && hosts(&u2).await == expected;
        if dropped && converged {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "survivors did not converge or drop the dead node"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "dead node dropped from /nodes {:?} after kill -9",
        killed.elapsed()
    );

    // Restart: it resyncs before serving and is listed again.
    topo.restart(0).await.unwrap();
    topo.wait_ready().await;
    assert_eq!(
        hosts(&u0).await,
        expected,
        "restarted node serves everything from its first read"
    );
    let back = topo.addr(0).to_string();
    testkit::wait_until(
        Duration::from_secs(10),
        "restarted node listed again",
        async || node_addrs(&u1).await.contains(&back) && node_addrs(&u2).await.contains(&back),
    )
    .await;
    renewer.abort();
    for mut n in topo.nodes.drain(..).flatten() {
        assert!(n.terminate().await.unwrap().success());
    }
}
