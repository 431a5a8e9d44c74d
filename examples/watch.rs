//! Watches an app and prints every change of its instance set.
//!
//! ```sh
//! DISCOVERY_NODES=127.0.0.1:7171 cargo run -p discovery-client --example watch -- demo.service
//! ```

use std::time::Duration;

use discovery_client::{Config, Discovery};
use naming::Resolution;

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let appid = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "demo.service".into());
    let discovery = match Discovery::new(Config::from_env()) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    // Optional: learn the cluster's node list first, at most 3 s.
    discovery.ready(Duration::from_secs(3)).await;
    let watch = match discovery.watch(&appid) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    let mut rx = watch.subscribe();
    loop {
        match &*rx.borrow_and_update() {
            Resolution::Pending => println!("{appid}: waiting for the registry"),
            Resolution::NotFound { appid, env } => println!("{appid}: not registered in env {env}"),
            Resolution::Found(info) => {
                println!("{appid}: {} instance(s)", info.len());
                for ins in info.iter() {
                    println!("  {} {} {:?}", ins.zone, ins.hostname, ins.addrs);
                }
            }
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { break },
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    let _ = discovery.close().await;
}
