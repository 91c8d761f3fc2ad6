//! Command-line flags that several binaries share (`--weights`, `--heads`, `--backend`,
//! `--threads`, `--labels`), defined once as `clap::Args` groups for `#[command(flatten)]` (feature
//! `clap`). The groups' doc comments are for readers of this code only
//! (`about = None`), so a flattened group never becomes a command's description.
//!
//! A command whose default differs changes it where it flattens the group, e.g.
//! `#[command(mut_arg("backend", |a| a.default_value("cpu")))]`, so the flag's name,
//! help and values stay the same everywhere.

use std::path::PathBuf;

use crate::BackendChoice;

/// `--weights FILE` and `--heads N`: the checkpoint a command runs.
#[derive(Clone, Debug, clap::Args)]
#[command(about = None, long_about = None)]
pub struct WeightsArgs {
    /// Checkpoint in safetensors with timm's tensor names (f32, f16 or bf16).
    #[arg(long, value_name = "FILE")]
    pub weights: PathBuf,
    /// Attention heads, when the checkpoint's `num_heads` metadata (or --arch, where a
    /// command takes it) does not say; else dim / 64.
    #[arg(long, value_name = "N")]
    pub heads: Option<usize>,
}

/// `--backend auto|cpu|wgpu`: which backend runs the model (`WGPU_ADAPTER_NAME` and
/// `WGPU_BACKEND` choose the adapter).
#[derive(Clone, Copy, Debug, clap::Args)]
#[command(about = None, long_about = None)]
pub struct BackendArgs {
    /// Backend to run on (WGPU_ADAPTER_NAME and WGPU_BACKEND choose the GPU adapter).
    #[arg(id = "backend", long = "backend", value_name = "KIND", value_enum, default_value_t = BackendChoice::Auto)]
    pub choice: BackendChoice,
}

/// `--threads N`: CPU worker threads.
#[derive(Clone, Copy, Debug, clap::Args)]
#[command(about = None, long_about = None)]
pub struct ThreadsArgs {
    /// CPU worker threads (0: one per core).
    #[arg(
        id = "threads",
        long = "threads",
        value_name = "N",
        default_value_t = 0
    )]
    pub count: usize,
}

/// `--labels FILE`: class names, one per line, over the checkpoint's own
/// (`class_names` metadata; see [`crate::labels`]).
#[derive(Clone, Debug, Default, clap::Args)]
#[command(about = None, long_about = None)]
pub struct LabelsArgs {
    /// Class names, one per line in class order, printed with the class indices
    /// (default: the checkpoint's `class_names` metadata, else indices only).
    #[arg(id = "labels", long = "labels", value_name = "FILE")]
    pub file: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Run {
        #[command(flatten)]
        model: WeightsArgs,
        #[command(flatten)]
        backend: BackendArgs,
        #[command(flatten)]
        threads: ThreadsArgs,
    }

    #[derive(Parser)]
    #[command(mut_arg("backend", |a| a.default_value("cpu")))]
    #[command(mut_arg("threads", |a| a.default_value("2")))]
    struct CpuFirst {
        #[command(flatten)]
        backend: BackendArgs,
        #[command(flatten)]
        threads: ThreadsArgs,
    }

    #[test]
    fn flattened_flags_parse_and_default() {
        let r = Run::try_parse_from(["x", "--weights", "m.safetensors", "--heads", "3"]).unwrap();
        assert_eq!(r.model.weights, PathBuf::from("m.safetensors"));
        assert_eq!(r.model.heads, Some(3));
        assert_eq!(r.backend.choice, BackendChoice::Auto);
        assert_eq!(r.threads.count, 0);
        let r = Run::try_parse_from(["x", "--weights", "m", "--backend", "wgpu", "--threads", "4"])
            .unwrap();
        assert_eq!(
            (r.backend.choice, r.threads.count),
            (BackendChoice::Wgpu, 4)
        );
    }

    #[test]
    fn a_wrong_backend_is_a_usage_error_listing_the_values() {
        let err = Run::try_parse_from(["x", "--weights", "m", "--backend", "tpu"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let msg = err.to_string();
        assert!(
            msg.contains("auto") && msg.contains("cpu") && msg.contains("wgpu"),
            "{msg}"
        );
    }

    #[test]
    fn flattened_groups_leave_the_command_about_alone() {
        use clap::CommandFactory;
        assert!(Run::command().get_about().is_none());
        let help = Run::command().render_help().to_string();
        assert!(
            help.contains("--weights") && help.contains("[default: auto]"),
            "{help}"
        );
    }

    #[test]
    fn a_command_can_change_a_default() {
        let r = CpuFirst::try_parse_from(["x"]).unwrap();
        assert_eq!((r.backend.choice, r.threads.count), (BackendChoice::Cpu, 2));
    }
}
