//! The `losa` command-line program: `losa generate` runs a block-wise diffusion LM checkpoint
//! with dense, Quest or LoSA attention and streams its text; `losa train` trains the small
//! retrieval model; `losa eval` measures accuracy and KV density of attention modes; `losa bench
//! generate` times generation on a real model shape.

mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "losa",
    version,
    about = "LoSA sparse attention for block-wise diffusion LMs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate text from a prompt.
    Generate(cli::generate::GenerateArgs),
    /// Train the small SDAR-format retrieval model (block diffusion objective).
    Train(cli::train::TrainArgs),
    /// Accuracy and KV density of dense / Quest / LoSA on a task set.
    Eval(cli::eval::EvalArgs),
    /// Speed benchmarks.
    Bench(cli::bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) =>
        {
            print!("{e}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let rendered = e.to_string();
            eprintln!(
                "{}",
                rendered.lines().next().unwrap_or("error: bad arguments")
            );
            return ExitCode::from(2);
        }
    };
    #[cfg(feature = "host-profile")]
    let profile = match cli::host_profile::HostProfile::from_env() {
        Ok(profile) => profile,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(1);
        }
    };
    let result = match &cli.command {
        Command::Generate(args) => cli::on_device(args.device, args.dtype, args),
        Command::Train(args) => cli::on_autodiff_device(args.device, args),
        Command::Eval(args) => cli::on_device(args.device, args.dtype, args),
        Command::Bench(cli::bench::BenchArgs {
            what: cli::bench::Bench::Generate(args),
        }) => cli::on_device(args.device, args.dtype, args),
        Command::Bench(cli::bench::BenchArgs {
            what: cli::bench::Bench::Matmul(args),
        }) => cli::on_device(args.device, args.dtype, args),
    };
    #[cfg(feature = "host-profile")]
    let result = match (result, profile.map(cli::host_profile::HostProfile::finish)) {
        (Ok(()), Some(Err(message))) => Err(message),
        (result, _) => result,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(1)
        }
    }
}
