//! `splitstream`: the project's front door. Subcommands run models, inspect event
//! recordings and (later) the end-to-end demo; `splitstream-device` and
//! `splitstream-edge` are the deployable binaries.
#![forbid(unsafe_code)]

mod cmd;

use clap::{Parser, Subcommand};

/// Split computing for edge AI: run a network's head on the device and its tail on
/// an edge server over QUIC.
#[derive(Parser)]
#[command(name = "splitstream", version, about, long_about = None)]
struct Cli {
    /// What to do; without one, the demo runs (`cargo run --release`).
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Edge and device in one process over real QUIC on the shipped test set: a table
    /// of agreement (or accuracy), latency and bytes per frame for each mode.
    Demo(cmd::demo::Args),
    /// Run a ViT/DeiT checkpoint on images or preprocessed tensors and print the top-k
    /// (an LLM: `input_ids` in a safetensors file to `logits`).
    Infer(cmd::infer::Args),
    /// Generate tokens with an LLM (GGUF file or Hugging Face folder), printed as they come.
    Generate(cmd::generate::Args),
    /// Chat with an LLM: user lines on stdin, answers streamed (the model's chat template).
    Chat(cmd::chat::Args),
    /// Accuracy on a labelled test set: local, split (each bottleneck and
    /// quantization, through the real codec) and JPEG offload, with bytes per frame.
    Evaluate(cmd::evaluate::Args),
    /// The pooled head output of a folder of images as .npy, to train the non-neural
    /// fallback (python/train_fallback.py) on.
    Features(cmd::features::Args),
    /// Fit a PCA token bottleneck at a split point and report agreement and bytes per frame.
    Calibrate(cmd::calibrate::Args),
    /// LPViT block pruning to FLOPs targets without fine-tuning: a block-sparse
    /// checkpoint and a table of agreement with the dense model.
    Prune(cmd::prune::Args),
    /// Inspect, convert, render or synthesise event-camera recordings.
    #[command(subcommand)]
    Events(cmd::events::Command),
    /// A run record (--record FILE) as a summary table and PNG timelines: power,
    /// temperature, frequency and memory over time with the stages shaded, and each
    /// stage's latency distribution.
    Report(cmd::report::Args),
}

fn main() -> std::process::ExitCode {
    // First, before any thread: no window-system noise from GPU probing (see there).
    splitstream_models::backend::choice::quiet_headless_gpu_probing();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli
        .command
        .unwrap_or(Command::Demo(cmd::demo::Args::default()))
    {
        Command::Demo(args) => cmd::demo::run(args),
        Command::Infer(args) => cmd::infer::run(args),
        Command::Generate(args) => cmd::generate::run(args),
        Command::Chat(args) => cmd::chat::run(args),
        Command::Calibrate(args) => cmd::calibrate::run(args),
        Command::Features(args) => cmd::features::run(args),
        Command::Prune(args) => cmd::prune::run(args),
        Command::Evaluate(args) => cmd::evaluate::run(args),
        Command::Events(command) => cmd::events::run(command),
        Command::Report(args) => cmd::report::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // One clear line (with its causes), no backtrace: see STYLE.md.
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
}
