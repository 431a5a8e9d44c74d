//! Calls the demo Greeter through `discovery://default/demo.service`: the
//! SDK resolves the app, the balancer (p2c) spreads calls over its
//! instances.
//!
//! ```sh
//! DISCOVERY_NODES=127.0.0.1:7171 cargo run -p discovery-tonic --example grpc_client -- kratos
//! ```

use std::{sync::Arc, time::Duration};

use demo_proto::helloworld::{HelloRequest, greeter_client::GreeterClient};
use discovery_client::{Config, Discovery};
use discovery_tonic::{Balanced, ClientConfig, Resolvers};

#[tokio::main]
async fn main() {
    let name = std::env::args().nth(1).unwrap_or_else(|| "kratos".into());
    let cfg = Config::from_env();
    let (zone, host, env) = (cfg.zone.clone(), cfg.hostname.clone(), cfg.env.clone());
    let discovery = match Discovery::new(cfg) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let resolvers = Resolvers::new().with(Arc::new(discovery.clone()));
    let client_cfg = ClientConfig::default().zone(zone).client_id(host).env(env);
    let channel =
        match Balanced::from_target("discovery://default/demo.service", &resolvers, &client_cfg) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        };
    let mut greeter = GreeterClient::new(channel);
    for _ in 0..5 {
        match greeter.say_hello(HelloRequest { name: name.clone() }).await {
            Ok(reply) => {
                let served_by = reply
                    .metadata()
                    .get("x-served-by")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("?")
                    .to_string();
                println!("{} (served by {served_by})", reply.into_inner().message);
            }
            Err(status) => println!("error: {status}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = discovery.close().await;
}
