//! `bench`: runs the discovery benchmarks (see `cargo xtask bench`), or,
//! as `bench ceiling`, serves the ceiling in a child process.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::Parser as _;
use loadgen::{
    args::{Cli, Cmd},
    ceiling, proc,
    scenarios::Bench,
};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Raised before any socket or child exists; the servers we start
    // inherit the limit, so that 10k parked pollers fit on both sides.
    let nofile = proc::raise_nofile()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.cmd {
        Some(Cmd::Ceiling { listen, body_bytes }) => rt.block_on(async move {
            let l = tokio::net::TcpListener::bind(listen).await?;
            ceiling::serve(l, ceiling::fixed_body(body_bytes)).await;
            Ok(())
        }),
        None => {
            let out = cli.run.out.clone();
            let report = rt.block_on(Bench::new(cli.run, nofile)?.run())?;
            println!("{}", report.table());
            for n in &report.notes {
                println!("* {n}");
            }
            // Last, so that it is the part of the output to copy.
            let scaling = report.scaling_table();
            if !scaling.is_empty() {
                println!("\nScaling ({} mode):\n\n{scaling}", report.mode);
            }
            std::fs::create_dir_all(&out)?;
            let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
            let path = out.join(format!(
                "{}.json",
                loadgen::report::utc(stamp).replace(':', "")
            ));
            std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
                .with_context(|| format!("writing {}", path.display()))?;
            println!("wrote {}", path.display());
            Ok(())
        }
    }
}
