//! Registers an instance and keeps it registered until SIGINT (Ctrl-C) or
//! SIGTERM (what `timeout`, systemd, Docker and Kubernetes send), then
//! cancels it within the SDK's 5 s bound.
//!
//! ```sh
//! DISCOVERY_NODES=127.0.0.1:7171 HOSTNAME=demo-1 \
//!     cargo run -p discovery-client --example register -- demo.service grpc://127.0.0.1:9000
//! ```

use discovery_client::{Config, Discovery};
use naming::{Instance, Registry};

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let mut args = std::env::args().skip(1);
    let appid = args.next().unwrap_or_else(|| "demo.service".into());
    let addrs: Vec<String> = args.collect();
    let addrs = if addrs.is_empty() {
        vec!["grpc://127.0.0.1:9000".into()]
    } else {
        addrs
    };

    let discovery = match Discovery::new(Config::from_env()) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let registration = match discovery
        .register(Instance {
            appid,
            addrs,
            ..Default::default()
        })
        .await
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("register failed: {e}");
            std::process::exit(1);
        }
    };
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("cannot install signal handlers");
        let _ = registration.cancel().await;
        std::process::exit(1);
    };
    println!(
        "registered {}; Ctrl-C or SIGTERM cancels",
        registration.appid()
    );
    let sig = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    match registration.cancel().await {
        Ok(()) => println!("{sig}: cancelled"),
        Err(e) => eprintln!("cancel failed (the lease will expire): {e}"),
    }
}
