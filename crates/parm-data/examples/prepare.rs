//! Fetches (if needed) and loads a dataset, printing file sizes and split counts.
//!
//! Usage: `cargo run -p parm-data --example prepare -- [fashion-mnist|mnist] [DATA_DIR]`
//! (default `fashion-mnist` and `data`).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "fashion-mnist".into());
    let data_dir = PathBuf::from(args.next().unwrap_or_else(|| "data".into()));
    let dir = match name.as_str() {
        "mnist" => parm_data::prepare_mnist(&data_dir)?,
        _ => parm_data::prepare_fashion_mnist(&data_dir)?,
    };
    let mut files: Vec<_> = std::fs::read_dir(&dir)?.filter_map(|e| e.ok()).collect();
    files.sort_by_key(|e| e.file_name());
    for f in files {
        println!("{:>10}  {}", f.metadata()?.len(), f.path().display());
    }
    let d = parm_data::load_dataset(&name, &data_dir)?;
    println!("{}: {}x{} classes {}", d.name, d.rows, d.cols, d.classes);
    println!("train {} / val {} / test {}", d.train.n, d.val.n, d.test.n);
    println!("first 10 test labels: {:?}", &d.test.labels[..10.min(d.test.n)]);
    Ok(())
}
