//! `parm data`: fetch and unpack a dataset into the data directory.

use super::Paths;

pub fn run(p: &Paths) -> anyhow::Result<()> {
    let ds = parm_data::load_dataset(&p.dataset, &p.data_dir)?;
    println!(
        "{}: train {} / validation {} / test {} images of {}x{}, {} classes, in {}",
        ds.name,
        ds.train.n,
        ds.val.n,
        ds.test.n,
        ds.rows,
        ds.cols,
        ds.classes,
        p.data_dir.display()
    );
    Ok(())
}
