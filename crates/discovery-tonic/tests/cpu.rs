//! The server-side `cpu_usage` trailer.

mod support;

use std::time::Duration;

use demo_proto::helloworld::greeter_client::GreeterClient;
use support::{Behaviour, TestServer, hello};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_responses_carry_a_nonzero_cpu_usage_trailer() {
    let server = TestServer::start(Behaviour {
        real_cpu: true,
        ..Default::default()
    });
    let mut client = GreeterClient::connect(format!("http://{}", server.addr))
        .await
        .unwrap();
    // No trailer before the first 500 ms interval has been measured…
    let first = client.say_hello(hello()).await.unwrap();
    assert!(first.metadata().get("cpu_usage").is_none());
    // …then, once the first interval has been measured, always a positive
    // integer (tonic merges unary trailers into the response metadata).
    let t = tokio::time::Instant::now();
    while client
        .say_hello(hello())
        .await
        .unwrap()
        .metadata()
        .get("cpu_usage")
        .is_none()
    {
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "no cpu_usage trailer within 3 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..5 {
        let reply = client.say_hello(hello()).await.unwrap();
        let v: u64 = reply
            .metadata()
            .get("cpu_usage")
            .expect("cpu_usage trailer")
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        println!("cpu_usage {v}");
        assert!(v > 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_values_reach_the_client() {
    let server = TestServer::start(Behaviour {
        cpu: Some(950),
        ..Default::default()
    });
    let mut client = GreeterClient::connect(format!("http://{}", server.addr))
        .await
        .unwrap();
    let reply = client.say_hello(hello()).await.unwrap();
    assert_eq!(reply.metadata().get("cpu_usage").unwrap(), "950");
}
