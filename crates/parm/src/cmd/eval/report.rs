//! `parm eval --report DIR`: the parity-model quality report (issue 3).
//!
//! For each dataset x k x code it trains what is missing (deployed model, parity models with
//! ParM's published recipe and with parm's own, the r = 2 linear code's two parity models,
//! cheap backup models), evaluates A_a, A_d and A_o on the test set, and writes
//! `DIR/accuracy.json` (rows `{dataset, model, code, recipe, k, S, lost, available, degraded,
//! overall_f5, extra_compute}`), `DIR/accuracy.md` (markdown table) and `DIR/accuracy.svg`
//! (A_d against k).
//!
//! `extra_compute` puts the codes side by side at equal cost: the redundant model's
//! multiply-accumulates per query ([`parm_nn::NetConfig::macs`]) over F's. A parity model
//! serves k queries with one pass (its cost / k; ParM's recipe uses ParM's MLP, F itself when F
//! is that MLP); collage runs its cell MLP once per cell (k cells per group, so one cell per
//! query); Berrut runs F on S blended queries per k;
//! a cheap backup (ParM §5's approximate backup models) runs on every query.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use burn::tensor::Device;
use parm_codes::{BerrutCode, encoder_for_shape};
use parm_nn::eval;
use parm_nn::parity::ParityConfig;
use parm_nn::train::{TrainConfig, save_model, train_deployed};
use serde::Serialize;

use crate::cmd::Paths;
use crate::cmd::train_parity::{parity_training_with, recipe_config};

/// Encoder of parm's own recipe (chosen by measurement, see BENCHMARKS.md).
pub const OWN_ENCODER: &str = "concatenation";

/// What the report covers and how much it may train.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    pub datasets: Vec<String>,
    /// Deployed architectures: `mlp` (`deployed.bpk`), `lenet5` (`deployed-lenet5.bpk`).
    pub models: Vec<String>,
    /// Epochs of a LeNet-5 the report trains.
    pub lenet_epochs: usize,
    pub ks: Vec<usize>,
    /// Optimizer steps of each parity model the report trains (whole epochs, rounded up), so
    /// that large k, with fewer groups per epoch, gets the same training as k = 2.
    pub steps: usize,
    /// ... and at least this many epochs (Fashion-MNIST k <= 4 with parm's 16 groups per step
    /// would otherwise see each training image only 4 to 7 times).
    pub min_epochs: usize,
    /// Deployed-model epochs if a dataset has no `deployed.bpk` yet.
    pub deployed_epochs: usize,
    /// Berrut extra instances per group.
    pub berrut_s: Vec<usize>,
    /// Also evaluate ApproxIFER as published (non-systematic: every answer interpolated, so
    /// its rows have A_a = A_d = A_o).
    pub approxifer: bool,
    /// Coding-group sizes with rows for the r = 2 linear code (two parity models of ParM's
    /// recipe per k, `linear-r2-p0/p1`; A_d with two predictions of a group unavailable).
    pub linear_ks: Vec<usize>,
    /// Rows for a cheap backup model per k (MLP deployed models only: ParM's MLP with hidden
    /// layers 200/k, 100/k, trained on the labels like F).
    pub backup: bool,
    pub seed: u64,
}

/// One row of `accuracy.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub dataset: String,
    pub model: String,
    /// `parity-addition`, `collage` (the concatenation encoder with a cell-wise per-query
    /// model), `linear-r2` (two parities of the Vandermonde code), `berrut`,
    /// `approxifer-nonsystematic` or `cheap-backup`.
    pub code: String,
    /// `parm-paper` (ParM's published recipe), `parm` (parm's own), `none` (training-free).
    pub recipe: String,
    pub k: usize,
    /// Extra instances per group (1 for a parity model, 2 for `linear-r2`).
    #[serde(rename = "S")]
    pub s: usize,
    /// Unavailable predictions per coding group that `degraded` is measured with (every
    /// pattern of that many; for Berrut at most S of them).
    pub lost: usize,
    pub available: f64,
    /// A_d with `lost` of the k predictions of a group unavailable.
    pub degraded: f64,
    pub overall_f5: f64,
    /// The redundant computation per query, in multiply-accumulates of F's (see the module
    /// docs): 0.5 costs half of F per query.
    pub extra_compute: f64,
    #[serde(skip)]
    pub degraded_one: f64,
    #[serde(skip)]
    pub train: Option<(f64, u64, usize)>,
}

pub fn run(base: &Paths, dir: &Path, opts: &ReportOptions) -> anyhow::Result<Vec<Row>> {
    let started = std::time::Instant::now();
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut rows = Vec::new();
    let device = Device::flex();
    for dataset in &opts.datasets {
        let paths = Paths { dataset: dataset.clone(), ..base.clone() };
        let ds = parm_data::load_dataset(dataset, &paths.data_dir)?;
        let mdir = paths.model_dir();
        for arch in &opts.models {
            let (deployed_name, prefix) = match arch.as_str() {
                "mlp" => ("deployed".to_string(), String::new()),
                other => (format!("deployed-{other}"), format!("{other}-")),
            };
            let deployed_path = mdir.join(format!("{deployed_name}.bpk"));
            if !deployed_path.exists() {
                if arch == "mlp" {
                    eprintln!("report: training the deployed model for {dataset} ({} epochs)", opts.deployed_epochs);
                    let cfg = TrainConfig { epochs: opts.deployed_epochs, seed: opts.seed, progress: false, ..Default::default() };
                    let (m, meta) = train_deployed(&ds, &cfg)?;
                    save_model(&m, &meta, &mdir, &deployed_name)?;
                } else if arch == "lenet5" {
                    eprintln!("report: training LeNet-5 for {dataset} ({} epochs)", opts.lenet_epochs);
                    let cfg = TrainConfig { epochs: opts.lenet_epochs, seed: opts.seed, progress: false, ..Default::default() };
                    let net = parm_nn::NetConfig::LeNet { channels: 1, side: ds.rows, classes: ds.classes };
                    let (m, meta) = parm_nn::train::train_deployed_net(&ds, &cfg, &net)?;
                    eprintln!(
                        "report: LeNet-5 {dataset}: {:.1} s, {:.0} steps/s",
                        meta.train_seconds,
                        meta.steps as f64 / meta.train_seconds.max(1e-9)
                    );
                    parm_nn::train::save_net(&m, &meta, &mdir, &deployed_name)?;
                } else {
                    anyhow::bail!("report: unknown model {arch} (known: mlp, lenet5)");
                }
            }
            let (f, fmeta) = parm_nn::train::load_net(&deployed_path, &device)?;
            let logits = eval::logits(&f, &ds.test.images, ds.test.n, ds.test.dim(), &device);
            let available = eval::accuracy(&logits, &ds.test.labels, ds.classes);
            eprintln!("report: {dataset}: {} A_a {:.4}", fmeta.arch, available);
            let ctx = Panel { paths: &paths, ds: &ds, deployed: &deployed_path, logits: &logits, prefix: &prefix, device: &device };
            let row = |code: &str, recipe: &str, k, s, lost, degraded, extra_compute, train| Row {
                dataset: dataset.clone(),
                model: fmeta.arch.clone(),
                code: code.into(),
                recipe: recipe.into(),
                k,
                s,
                lost,
                available,
                degraded,
                overall_f5: eval::overall_accuracy(available, degraded, 0.05),
                extra_compute,
                degraded_one: degraded,
                train,
            };
            let f_macs = net_config(&fmeta)?.macs() as f64;
            for &k in &opts.ks {
                for (recipe, encoder) in [("parm-paper", "addition"), ("parm", OWN_ENCODER)] {
                    let name = format!("report-{prefix}{recipe}-k{k}-{encoder}");
                    let (meta, fp, cfg) = ctx.parity(opts, recipe, encoder, k, &name)?;
                    let enc = encoder_for_shape(encoder, k, &[ds.rows, ds.cols])?;
                    let degraded = eval::degraded_accuracy(&logits, &fp, &ds.test, enc.as_ref(), ds.classes, opts.seed, &device);
                    eprintln!("report: {dataset} k={k} {recipe} {encoder}: A_d {degraded:.4}");
                    let extra = net_config(&meta)?.macs() as f64 / k as f64 / f_macs;
                    let train = Some((meta.train_seconds, meta.steps, meta.epochs));
                    if cfg.cells && cfg.per_query {
                        // The cell-wise per-query model over the concatenation encoder is collage
                        // (Narra et al., arXiv 1904.12222): one parity query answers any number
                        // of a group's queries, so it also has rows with two lost.
                        rows.push(row("collage", recipe, k, 1, 1, degraded, extra, train));
                        let two = eval::per_query_degraded_accuracy(&fp, &ds.test, enc.as_ref(), 2, ds.classes, opts.seed, &device);
                        eprintln!("report: {dataset} k={k} collage: A_d {two:.4} (2 lost)");
                        rows.push(row("collage", recipe, k, 1, 2, two, extra, None));
                    } else {
                        rows.push(row(&format!("parity-{encoder}"), recipe, k, 1, 1, degraded, extra, train));
                    }
                }
                if opts.linear_ks.contains(&k) {
                    let (one, two, macs) = ctx.linear_r2(opts, k)?;
                    eprintln!("report: {dataset} k={k} linear r=2: A_d {one:.4} (1 lost), {two:.4} (2 lost)");
                    rows.push(Row { degraded_one: one, ..row("linear-r2", "parm-paper", k, 2, 2, two, macs / k as f64 / f_macs, None) });
                }
                for &s in &opts.berrut_s {
                    let code = BerrutCode::new(k, s)?;
                    let e = s.min(k);
                    let extra = s as f64 / k as f64;
                    let degraded = eval::berrut_degraded_accuracy(&logits, &f, &ds.test, &code, e, ds.classes, opts.seed, &device);
                    let degraded_one = if e == 1 {
                        degraded
                    } else {
                        eval::berrut_degraded_accuracy(&logits, &f, &ds.test, &code, 1, ds.classes, opts.seed, &device)
                    };
                    eprintln!("report: {dataset} k={k} berrut S={s}: A_d {degraded:.4} ({e} lost), {degraded_one:.4} (1 lost)");
                    if opts.approxifer {
                        let code = parm_codes::ApproxiferCode::new(k, s)?;
                        let acc = eval::approxifer_accuracy(&f, &ds.test, &code, s, ds.classes, opts.seed, &device);
                        eprintln!("report: {dataset} k={k} approxifer (non-systematic) S={s}: accuracy {acc:.4}");
                        rows.push(Row {
                            available: acc,
                            overall_f5: acc,
                            ..row("approxifer-nonsystematic", "none", k, s, s, acc, extra, None)
                        });
                    }
                    rows.push(Row { degraded_one, ..row("berrut", "none", k, s, e, degraded, extra, None) });
                }
                if opts.backup && arch == "mlp" {
                    let (acc, meta) = ctx.backup(opts, k)?;
                    eprintln!("report: {dataset} k={k} cheap backup {}: A_d {acc:.4}", meta.arch);
                    let train = Some((meta.train_seconds, meta.steps, meta.epochs));
                    rows.push(row("cheap-backup", "labels", k, 1, 1, acc, net_config(&meta)?.macs() as f64 / f_macs, train));
                }
            }
        }
    }
    std::fs::write(dir.join("accuracy.json"), serde_json::to_string_pretty(&rows)? + "\n")?;
    std::fs::write(dir.join("accuracy.md"), markdown(&rows) + "\n" + &degraded_tables(&rows))?;
    plot(&rows, &dir.join("accuracy.svg"))?;
    eprintln!("report: done in {:.0} s", started.elapsed().as_secs_f64());
    Ok(rows)
}

/// What every row of one dataset and deployed model shares.
struct Panel<'a> {
    paths: &'a Paths,
    ds: &'a parm_data::Dataset,
    deployed: &'a Path,
    /// F on the test split, `[n, classes]`.
    logits: &'a [f32],
    /// Model-name prefix of a non-MLP deployed model (`lenet5-`).
    prefix: &'a str,
    device: &'a Device,
}

impl Panel<'_> {
    /// Trains (or finds) the parity model `name` of `recipe` for k with `encoder`, on
    /// `opts.steps` optimizer steps and at least `opts.min_epochs` epochs, and loads it.
    fn parity(
        &self,
        opts: &ReportOptions,
        recipe: &str,
        encoder: &str,
        k: usize,
        name: &str,
    ) -> anyhow::Result<(parm_nn::ModelMeta, parm_nn::Net, ParityConfig)> {
        let base = recipe_config(recipe, k, 1)?;
        let steps_per_epoch = (self.ds.train.n / k).div_ceil(base.groups_per_step);
        let epochs = opts.steps.div_ceil(steps_per_epoch).max(opts.min_epochs);
        let cfg = ParityConfig { progress: false, seed: opts.seed, epochs, ..base };
        // The cell-wise parity model gets its own name (an older dense one of the same recipe
        // is not resumed into it).
        let name = if cfg.cells { format!("{name}-cells") } else { name.to_string() };
        let meta = parity_training_with(self.paths, self.deployed, k, encoder, &cfg, &name)?;
        eprintln!(
            "report: {name}: {} epochs, {:.1} s, {:.0} steps/s",
            meta.epochs,
            meta.train_seconds,
            meta.steps as f64 / meta.train_seconds.max(1e-9)
        );
        let (fp, _) = parm_nn::train::load_net(&self.paths.model_dir().join(format!("{name}.bpk")), self.device)?;
        Ok((meta, fp, cfg))
    }

    /// The r = 2 linear code at k: A_d with one and with two predictions of a group lost, and
    /// the two parity models' multiply-accumulates together.
    fn linear_r2(&self, opts: &ReportOptions, k: usize) -> anyhow::Result<(f64, f64, f64)> {
        let mut models = Vec::new();
        let mut macs = 0.0;
        for l in 0..2 {
            let encoder = format!("linear-r2-p{l}");
            let (meta, fp, _) =
                self.parity(opts, "parm-paper", &encoder, k, &format!("report-{}parm-paper-k{k}-{encoder}", self.prefix))?;
            macs += net_config(&meta)?.macs() as f64;
            models.push(fp);
        }
        let refs: Vec<&dyn parm_nn::Classifier> = models.iter().map(|m| m as &dyn parm_nn::Classifier).collect();
        let code = parm_codes::LinearCode::vandermonde(k, 2)?;
        let lost = |e| eval::linear_degraded_accuracy(self.logits, &refs, &self.ds.test, &code, e, self.ds.classes, opts.seed, self.device);
        Ok((lost(1), lost(2.min(k)), macs))
    }

    /// The cheap backup model for k (`models::ensure_backup`) and its accuracy on the test
    /// split: the A_d of answering an unavailable prediction with the backup's.
    fn backup(&self, opts: &ReportOptions, k: usize) -> anyhow::Result<(f64, parm_nn::ModelMeta)> {
        let budget = crate::models::Budget { deployed_epochs: opts.deployed_epochs, parity_epochs: 0, seed: opts.seed };
        let path = crate::models::ensure_backup(self.paths, k, &budget)?;
        let (b, meta) = parm_nn::train::load_net(&path, self.device)?;
        let out = eval::logits(&b, &self.ds.test.images, self.ds.test.n, self.ds.test.dim(), self.device);
        Ok((eval::accuracy(&out, &self.ds.test.labels, self.ds.classes), meta))
    }
}

/// The architecture a model's metadata names.
fn net_config(meta: &parm_nn::ModelMeta) -> anyhow::Result<parm_nn::NetConfig> {
    parm_nn::NetConfig::parse(&meta.arch, &meta.mlp).with_context(|| format!("unknown architecture {}", meta.arch))
}

/// The markdown table of the report.
pub fn markdown(rows: &[Row]) -> String {
    let mut s = String::from(
        "| dataset | model | code | recipe | k | S | lost | extra compute | A_a | A_d | A_d (1 lost) | A_o 1% | A_o 5% | A_o 10% | train s | steps/s |\n\
         |---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let o = |f| eval::overall_accuracy(r.available, r.degraded, f);
        let (ts, sps) = match r.train {
            Some((secs, steps, epochs)) => (format!("{secs:.0} ({epochs} ep)"), format!("{:.0}", steps as f64 / secs.max(1e-9))),
            None => ("-".into(), "-".into()),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {:.3} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {} | {} |",
            r.dataset,
            r.model,
            r.code,
            r.recipe,
            r.k,
            r.s,
            r.lost,
            r.extra_compute,
            r.available,
            r.degraded,
            r.degraded_one,
            o(0.01),
            o(0.05),
            o(0.10),
            ts,
            sps
        );
    }
    s
}

/// A_d against k, one table per dataset and deployed model, one row per code / recipe / S (the
/// tables of BENCHMARKS.md, "Parity-model quality").
pub fn degraded_tables(rows: &[Row]) -> String {
    let mut s = String::from("A_d:\n");
    s += &tables(rows, |_| true, |r| r.degraded);
    s += "\nA_o at f_u = 5%, one extra instance per group (ApproxIFER: its accuracy, every answer decoded):\n";
    s += &tables(rows, |r| r.s == 1 && r.lost == 1, |r| r.overall_f5);
    s += "\nExtra compute per query, in multiply-accumulates of F's:\n";
    s += &tables(rows, |r| r.lost == 1 || r.code == "linear-r2", |r| r.extra_compute);
    s
}

/// One table per dataset and deployed model of `value` for the rows `keep` selects.
fn tables(rows: &[Row], keep: impl Fn(&Row) -> bool, value: impl Fn(&Row) -> f64) -> String {
    let rows: Vec<&Row> = rows.iter().filter(|r| keep(r)).collect();
    let mut ks: Vec<usize> = rows.iter().map(|r| r.k).collect();
    ks.sort_unstable();
    ks.dedup();
    let mut panels: Vec<(&str, &str)> = rows.iter().map(|r| (r.dataset.as_str(), r.model.as_str())).collect();
    panels.dedup();
    let label = |r: &Row| match (r.code.as_str(), r.recipe.as_str()) {
        ("parity-addition", "parm-paper") => "ParM recipe (addition)".to_string(),
        ("collage", _) if r.lost > 1 => format!("collage, {} lost", r.lost),
        ("collage", _) => "collage (parm recipe: concatenation, cell-wise per-query)".to_string(),
        ("linear-r2", _) => "linear code r=2 (ParM recipe), 2 lost".to_string(),
        ("cheap-backup", _) => "cheap backup (MLP 200/k-100/k)".to_string(),
        ("berrut", _) if r.s == 1 => "Berrut systematic, S=1".to_string(),
        ("berrut", _) => format!("Berrut systematic, S={}, S lost", r.s),
        ("approxifer-nonsystematic", _) => format!("ApproxIFER non-systematic, S={}", r.s),
        (code, recipe) => format!("{code} ({recipe})"),
    };
    let mut s = String::new();
    for (ds, model) in panels {
        let sel: Vec<&&Row> = rows.iter().filter(|r| (r.dataset.as_str(), r.model.as_str()) == (ds, model)).collect();
        let available = sel.iter().find(|r| r.code != "approxifer-nonsystematic").map_or(0.0, |r| r.available);
        let _ = write!(s, "\n{ds}, {model}, A_a {available:.4}:\n\n| code |");
        for k in &ks {
            let _ = write!(s, " k={k} |");
        }
        s += "\n|---|";
        s += &"---:|".repeat(ks.len());
        s += "\n";
        let mut labels: Vec<String> = Vec::new();
        for r in &sel {
            let l = label(r);
            if !labels.contains(&l) {
                labels.push(l);
            }
        }
        // Parity codes first, then Berrut, then ApproxIFER (each in the order met).
        labels.sort_by_key(|l| {
            if l.starts_with("Berrut") {
                1
            } else if l.starts_with("ApproxIFER") {
                2
            } else {
                0
            }
        });
        for l in labels {
            let _ = write!(s, "| {l} |");
            for k in &ks {
                match sel.iter().find(|r| r.k == *k && label(r) == l) {
                    Some(r) => {
                        let _ = write!(s, " {:.3} |", value(r));
                    }
                    None => s += " - |",
                }
            }
            s += "\n";
        }
    }
    s
}

/// A_d against k, one panel per dataset, one line per code / recipe / S (SVG; plotters'
/// built-in text, no system fonts needed).
pub fn plot(rows: &[Row], path: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let mut datasets: Vec<(&str, &str)> = rows.iter().map(|r| (r.dataset.as_str(), r.model.as_str())).collect();
    datasets.dedup();
    let n = datasets.len().max(1);
    let (grid_rows, grid_cols) = (n.div_ceil(2), n.min(2));
    let root = SVGBackend::new(path, (560 * grid_cols as u32, 420 * grid_rows as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((grid_rows, grid_cols));
    let kmax = rows.iter().map(|r| r.k).max().unwrap_or(12) as f64 + 0.5;
    let palette = [RED, BLUE, GREEN, MAGENTA, CYAN, RGBColor(255, 140, 0), RGBColor(128, 0, 128), RGBColor(120, 120, 0), BLACK];
    for (panel, ds) in panels.iter().zip(&datasets) {
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("{} {}: A_d", ds.0, ds.1.split('-').next().unwrap_or("")), ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(45)
            .build_cartesian_2d(1.5f64..kmax, 0.0f64..1.0)?;
        chart.configure_mesh().x_desc("k").y_desc("A_d").draw()?;
        let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
        for r in rows.iter().filter(|r| (r.dataset.as_str(), r.model.as_str()) == *ds) {
            let label = match r.code.as_str() {
                "berrut" => format!("berrut S={}", r.s),
                "collage" | "linear-r2" if r.lost > 1 => format!("{} {} lost", r.code, r.lost),
                "approxifer-nonsystematic" => format!("approxifer S={}", r.s),
                _ => format!("{} {}", r.code, r.recipe),
            };
            match series.iter_mut().find(|(l, _)| *l == label) {
                Some((_, pts)) => pts.push((r.k as f64, r.degraded)),
                None => series.push((label, vec![(r.k as f64, r.degraded)])),
            }
        }
        if let Some(a) = rows.iter().find(|r| (r.dataset.as_str(), r.model.as_str()) == *ds).map(|r| r.available) {
            chart
                .draw_series(LineSeries::new([(1.5, a), (kmax, a)], BLACK.mix(0.4)))?
                .label("A_a")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], BLACK.mix(0.4)));
        }
        for (i, (label, pts)) in series.into_iter().enumerate() {
            let c = palette[i % palette.len()];
            chart
                .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)).point_size(3))?
                .label(label)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 15, y)], c.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerLeft)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(code: &str, k: usize, s: usize, lost: usize, degraded: f64, extra_compute: f64) -> Row {
        Row {
            dataset: "fashion-mnist".into(),
            model: "mlp-784-200-100-10".into(),
            code: code.into(),
            recipe: "parm".into(),
            k,
            s,
            lost,
            available: 0.9,
            degraded,
            overall_f5: eval::overall_accuracy(0.9, degraded, 0.05),
            extra_compute,
            degraded_one: degraded,
            train: None,
        }
    }

    #[test]
    fn tables_keep_each_code_and_count_of_lost_predictions_apart() {
        let rows = [
            row("collage", 2, 1, 1, 0.871, 0.559),
            row("collage", 2, 1, 2, 0.872, 0.559),
            row("linear-r2", 2, 2, 2, 0.61, 1.0),
            row("cheap-backup", 2, 1, 1, 0.85, 0.47),
        ];
        let t = degraded_tables(&rows);
        let line = |label: &str| t.lines().find(|l| l.starts_with(&format!("| {label}"))).unwrap_or_else(|| panic!("{label} in {t}"));
        assert!(line("collage (").contains("0.871"), "{t}");
        assert!(line("collage, 2 lost").contains("0.872"), "{t}");
        assert!(line("linear code r=2").contains("0.610"), "{t}");
        assert!(line("cheap backup").contains("0.850"), "{t}");
        // Extra compute: one row per code with one lost (and the r = 2 code).
        let extra = &t[t.find("Extra compute").expect("extra compute table")..];
        assert!(extra.contains("| 0.559 |") && extra.contains("| 0.470 |") && extra.contains("| 1.000 |"), "{extra}");
        assert!(!extra.contains("2 lost |") || extra.contains("linear code r=2"), "{extra}");
        // A_o only for one lost with one extra instance.
        let ao = &t[t.find("A_o at").expect("A_o table")..t.find("Extra compute").unwrap()];
        assert!(!ao.contains("2 lost") && !ao.contains("r=2"), "{ao}");
    }
}
