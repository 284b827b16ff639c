//! `mock-provider`: a fault-injecting OpenAI-compatible upstream (see the library docs).
#![forbid(unsafe_code)]

use clap::Parser;
use std::time::Duration;

/// Command line of the mock.
#[derive(Debug, Parser)]
#[command(
    name = "mock-provider",
    about = "A fault-injecting OpenAI-compatible upstream"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9090")]
    listen: String,
    /// Milliseconds between two streamed tokens.
    #[arg(long, default_value_t = 2)]
    token_interval_ms: u64,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let options = llmgw_mock_provider::Options {
        token_interval: Duration::from_millis(args.token_interval_ms),
    };
    match llmgw_mock_provider::spawn(&args.listen, options).await {
        Ok(handle) => {
            println!("mock-provider listening on http://{}", handle.addr);
            let _ = tokio::signal::ctrl_c().await;
        }
        Err(e) => {
            eprintln!("mock-provider: cannot listen on {}: {e}", args.listen);
            std::process::exit(2);
        }
    }
}
