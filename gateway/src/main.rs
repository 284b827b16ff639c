//! `llmgw`: the gateway's command line.
#![forbid(unsafe_code)]

fn main() {
    std::process::exit(llmgw_gateway::cli::main());
}
