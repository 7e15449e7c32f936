//! `parm loadgen` (hidden): one open-loop trial of `parm bench`'s load generator as a process
//! of its own (`parm_bench::client`). `parm bench` writes the trial's files and starts it on the
//! client's emulated host; the report goes to stdout as one line of JSON.

use std::path::PathBuf;

use clap::Args;

#[derive(Args)]
pub struct LoadgenArgs {
    /// The trial's directory, as `parm_bench::client` writes it (job.json, inputs.f32).
    #[arg(long)]
    pub job: PathBuf,
}

pub fn run(args: &LoadgenArgs) -> anyhow::Result<()> {
    let report = super::runtime(1)?.block_on(parm_bench::client::run_job(&args.job))?;
    println!("{report}");
    Ok(())
}
