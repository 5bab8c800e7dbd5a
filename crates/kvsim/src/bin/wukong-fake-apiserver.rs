//! `wukong-fake-apiserver [ADDR]`: the fake API server with its simulated KubeVirt in a process
//! of its own (for the operator's benchmark and for trying the operator without a cluster).
//! Prints its URL, serves until SIGINT or SIGTERM. Not part of the product binary.
#![forbid(unsafe_code)]

use std::net::SocketAddr;

#[tokio::main]
async fn main() {
    let listen: SocketAddr = match std::env::args().nth(1) {
        None => "127.0.0.1:0".parse().expect("an address"),
        Some(a) => match a.parse() {
            Ok(a) => a,
            Err(e) => {
                eprintln!("wukong-fake-apiserver: listen address {a:?}: {e}");
                std::process::exit(1);
            }
        },
    };
    let api = match wukong_fakeapi::FakeApi::start_on(listen, Default::default()).await {
        Ok(api) => api,
        Err(e) => {
            eprintln!("wukong-fake-apiserver: listen on {listen}: {e}");
            std::process::exit(1);
        }
    };
    let client = match kube::Client::try_from(kube::Config::new(
        api.url().parse().expect("the fake's URL"),
    )) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wukong-fake-apiserver: a client for the simulator: {e}");
            std::process::exit(1);
        }
    };
    // A resync as KubeVirt's controllers have it: rare, the watches do the work.
    let opts = wukong_kvsim::Options {
        resync: Some(std::time::Duration::from_secs(300)),
    };
    let kubevirt = match wukong_kvsim::start_with(client, opts).await {
        Ok(k) => k,
        Err(e) => {
            eprintln!("wukong-fake-apiserver: starting the simulated KubeVirt: {e}");
            std::process::exit(1);
        }
    };
    println!("{}", api.url());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    drop(kubevirt);
    api.stop();
}
