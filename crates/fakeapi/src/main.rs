//! `wukong-fakeapi [ADDR]`: the fake API server in its own process (for the operator
//! benchmark and for trying the operator by hand). Prints its URL, serves until killed.
#![forbid(unsafe_code)]

use wukong_fakeapi::{FakeApi, Options};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into())
        .parse()
        .map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("address: {e}"))
        })?;
    let api = FakeApi::start_on(addr, Options::default()).await?;
    println!("{}", api.url());
    tokio::signal::ctrl_c().await?;
    api.stop();
    Ok(())
}
