//! `splitstream-bench`: measures the real paths side by side with their peers in the
//! same run (onnxruntime for models, zstd/JPEG for the codec, TCP+TLS for the
//! transport, expelliarmus for event decoding) and prints JSON.
#![forbid(unsafe_code)]

mod cmd;
mod link;
mod netem;
mod plot;
mod stats;

use clap::{Parser, Subcommand};

/// Benchmarks that compare splitstream with its peers in one run and print JSON.
#[derive(Parser)]
#[command(name = "splitstream-bench", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Model latency (ViT/DeiT) against onnxruntime on the same ONNX export.
    Model(cmd::model::Args),
    /// Codec bytes, error and throughput against zstd-on-raw and JPEG.
    Codec(cmd::codec::Args),
    /// QUIC request/response against TCP+TLS on loopback.
    Transport(cmd::transport::Args),
    /// Event decoding rate per format against expelliarmus.
    Events(cmd::events::Args),
    /// Matrix multiply GFLOP/s on a backend (CPU or wgpu), large and ViT shapes.
    Matmul(cmd::matmul::Args),
    /// One edge (the real binary) and N devices over QUIC on loopback at a set frame
    /// rate: frames/s, latency, bytes per frame, edge batches and peak memory per mode.
    E2e(cmd::e2e::Args),
    /// The non-neural fallback (kNN, linear SVM, random forest on the head's features)
    /// beside the network: accuracy, time and modelled energy per frame.
    Fallback(cmd::fallback::Args),
    /// The device's policy (auto) against always-local, always-offload and a fixed
    /// split on battery, bandwidth and edge-power-cap scenarios.
    Policy(cmd::policy::Args),
    /// A split LLM's hidden states per codec and split point: bytes per token and the
    /// perplexity change on a committed text.
    LlmSplit(cmd::llm_split::Args),
    /// QUIC against TCP+TLS over an emulated impaired link (loss, RTT, rate limit):
    /// frame latency, frames on time, bytes on the wire. Needs root.
    Link(cmd::link::Args),
    /// Measures this machine into a cost-model profile (TOML): peak GFLOP/s per
    /// instruction set and thread count, cache and DRAM bandwidth and latency, the
    /// clock, the CPU backend's fit.
    Machine(cmd::machine::Args),
    /// The cost model's per-layer prediction from a profile against measurement, for
    /// every model family that loads: median absolute error per layer and per model.
    Costmodel(cmd::costmodel::Args),
}

fn main() -> std::process::ExitCode {
    // First, before any thread: no window-system noise from GPU probing (see there).
    splitstream_models::backend::choice::quiet_headless_gpu_probing();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Model(args) => cmd::model::run(args),
        Command::Codec(args) => cmd::codec::run(args),
        Command::Transport(args) => cmd::transport::run(args),
        Command::Events(args) => cmd::events::run(args),
        Command::Matmul(args) => cmd::matmul::run(args),
        Command::E2e(args) => cmd::e2e::run(args),
        Command::Policy(args) => cmd::policy::run(args),
        Command::Fallback(args) => cmd::fallback::run(args),
        Command::Link(args) => cmd::link::run(args),
        Command::Machine(args) => cmd::machine::run(args),
        Command::Costmodel(args) => cmd::costmodel::run(args),
        Command::LlmSplit(args) => cmd::llm_split::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn every_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }

    #[test]
    fn backends_and_codecs_are_value_lists() {
        use clap::Parser;
        let err = super::Cli::try_parse_from(["b", "policy", "--edge-backend", "tpu"]);
        assert_eq!(err.err().map(|e| e.exit_code()), Some(2));
        let err = super::Cli::try_parse_from(["b", "e2e", "--codec", "u7"]);
        assert_eq!(err.err().map(|e| e.exit_code()), Some(2));
        let err = super::Cli::try_parse_from(["b", "e2e", "--modes", "local,remote"]);
        assert_eq!(err.err().map(|e| e.exit_code()), Some(2));
        let err = super::Cli::try_parse_from(["b", "model", "--weights", "m", "--backend", "gpu"]);
        assert_eq!(err.err().map(|e| e.exit_code()), Some(2));
    }
}
