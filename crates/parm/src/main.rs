//! `parm`: learned erasure-coded resilience for prediction serving (ParM, SOSP 2019).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cmd;
mod deployed;
mod models;
mod userdata;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "parm", version, about = "Prediction serving with learned erasure-coded resilience (ParM)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fetch and unpack a dataset into the data directory.
    Data(cmd::Paths),
    /// Train the deployed model (ParM's MLP 784-200-100-10).
    Train(cmd::train::TrainArgs),
    /// Train a parity model for coding groups of k queries.
    TrainParity(cmd::train_parity::TrainParityArgs),
    /// Available, degraded-mode and overall accuracy of a deployed + parity model pair.
    Eval(cmd::eval::EvalArgs),
    /// Write a parm model (MLP, cell-wise MLP) as an ONNX file.
    Export(cmd::export::ExportArgs),
    /// Run a parm model on test images on a chosen device (cpu, cuda): outputs and timing.
    Infer(cmd::infer::InferArgs),
    /// Serve one model (deployed or parity) as a model instance over OIP gRPC.
    Worker(cmd::worker::WorkerArgs),
    /// The frontend: OIP HTTP for clients, coding groups over the instances.
    Serve(Box<cmd::serve::ServeArgs>),
    /// The whole coded path end to end on Fashion-MNIST with one slowed instance.
    Demo(cmd::demo::DemoArgs),
    /// Tail latency under injected faults: parm against none, Equal-Resources, replication, hedging.
    Bench(cmd::bench::BenchArgs),
    /// Discrete-event simulation calibrated on this machine, validated against `bench`, projected to 1000 instances.
    Simulate(cmd::simulate::SimulateArgs),
    /// One trial of `bench`'s load generator, as a process of its own (started by `bench`).
    #[command(hide = true)]
    Loadgen(cmd::loadgen::LoadgenArgs),
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let given = |sub: &str, id: &str| matches.subcommand_matches(sub).is_some_and(|m| m.value_source(id) == Some(ValueSource::CommandLine));
    let result = match cli.command {
        Command::Data(p) => cmd::data::run(&p),
        Command::Train(a) => cmd::train::run(&a),
        Command::TrainParity(a) => cmd::train_parity::run(&a),
        Command::Eval(a) => cmd::eval::run(&a),
        Command::Export(a) => cmd::export::run(&a),
        Command::Infer(a) => cmd::infer::run(&a),
        Command::Worker(a) => cmd::worker::run(a),
        Command::Serve(a) => cmd::serve::run(*a, |id| given("serve", id)),
        Command::Demo(a) => cmd::demo::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Simulate(a) => cmd::simulate::run(a),
        Command::Loadgen(a) => cmd::loadgen::run(&a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
