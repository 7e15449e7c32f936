//! `parm`: learned erasure-coded resilience for prediction serving (ParM, SOSP 2019).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod backend;
mod cmd;
mod models;
mod report;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "parm", version, about = "Prediction serving with learned erasure-coded resilience (ParM)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Paths shared by the commands that touch data and models.
#[derive(clap::Args, Clone, Debug)]
pub struct Paths {
    /// Dataset: fashion-mnist or mnist.
    #[arg(long, default_value = "fashion-mnist")]
    pub dataset: String,
    /// Where datasets are prepared.
    #[arg(long, default_value = "data")]
    pub data_dir: PathBuf,
    /// Where models are written; each dataset gets a subdirectory.
    #[arg(long, default_value = "models")]
    pub models_dir: PathBuf,
}

impl Paths {
    pub fn model_dir(&self) -> PathBuf {
        self.models_dir.join(&self.dataset)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Fetch and unpack a dataset into the data directory.
    Data(Paths),
    /// Train the deployed model (ParM's MLP 784-200-100-10).
    Train(cmd::TrainArgs),
    /// Train a parity model for coding groups of k queries.
    TrainParity(cmd::TrainParityArgs),
    /// Available, degraded-mode and overall accuracy of a deployed + parity model pair.
    Eval(cmd::EvalArgs),
    /// Serve one model (deployed or parity) as a model instance over OIP gRPC.
    Worker(cmd::WorkerArgs),
    /// The frontend: OIP HTTP for clients, coding groups over the instances.
    Serve(cmd::ServeArgs),
    /// The whole coded path end to end on Fashion-MNIST with one slowed instance.
    Demo(cmd::demo::DemoArgs),
    /// Tail latency under injected faults: parm against none, Equal-Resources, replication, hedging.
    Bench(cmd::bench::BenchArgs),
    /// Discrete-event simulation calibrated on this machine, validated against `bench`, projected to 1000 instances.
    Simulate(cmd::simulate::SimulateArgs),
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Data(p) => cmd::data(&p),
        Command::Train(a) => cmd::train(&a),
        Command::TrainParity(a) => cmd::train_parity(&a),
        Command::Eval(a) => cmd::eval(&a),
        Command::Worker(a) => cmd::worker(a),
        Command::Serve(a) => cmd::serve(a),
        Command::Demo(a) => cmd::demo::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Simulate(a) => cmd::simulate::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
