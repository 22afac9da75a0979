//! `recoverd sim --world W --kubeconfig-out F`: serves every cluster of a world on loopback
//! (plain HTTP), writes a kubeconfig for them, seeds the world through the ordinary client
//! path, runs its reactors, and runs until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::sim::Session;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The world: clusters (CRDs, objects, faults) and reactors.
    #[arg(long, env = "RECOVERD_SIM_WORLD")]
    pub world: PathBuf,
    /// Address of the first cluster; the others listen on the following ports. Default: free
    /// ports on 127.0.0.1.
    #[arg(long, env = "RECOVERD_SIM_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Where to write the kubeconfig: one context per cluster (context name = cluster name),
    /// the world's first cluster current.
    #[arg(long, env = "RECOVERD_SIM_KUBECONFIG_OUT")]
    pub kubeconfig_out: PathBuf,
}

pub async fn main(args: Args) -> anyhow::Result<ExitCode> {
    let session = Session::start(&args.world, args.listen, Some(&args.kubeconfig_out)).await?;
    for c in session.sandbox.simulator.clusters() {
        println!("cluster {:<12} http://{}", c.name, c.addr);
    }
    println!(
        "world: {} object(s), {} reactor(s)",
        session.seeded.len(),
        session.world.reactors.len()
    );
    println!(
        "kubeconfig: {}\ntry: kubectl --kubeconfig {} get ns\nCtrl-C stops the simulator.",
        args.kubeconfig_out.display(),
        args.kubeconfig_out.display()
    );
    super::signal::wait_for_stop().await;
    println!("stopping");
    drop(session);
    Ok(ExitCode::SUCCESS)
}
