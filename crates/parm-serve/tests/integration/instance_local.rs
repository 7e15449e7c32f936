//! In-process instances (`inproc:` entries, `parm_serve::instance::local`) on the coded path:
//! the frontend reaches them by their entries through `FrontendConfig::inproc`, a stalled
//! in-process deployed instance's queries are answered by reconstructions from an in-process
//! parity instance, and an entry with no instance behind it is refused at start. The models are
//! exact linear maps (F(x) = W x + b, parity Fp(p) = W p + 2 b for k = 2), so every
//! reconstruction equals the original exactly.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use parm_serve::coded::{Frontend, FrontendConfig};
use parm_serve::instance::backend::LinearBackend;
use parm_serve::instance::local::LocalInstance;
use parm_serve::oip::ModelSpec;
use parm_serve::upstream::Instance;

const IN: usize = 4;
const OUT: usize = 3;

fn linear(name: &str, bias: f32) -> Arc<LinearBackend> {
    let w = (0..IN * OUT).map(|i| i as f32 * 0.5 - 2.0).collect();
    Arc::new(LinearBackend::new(ModelSpec::fp32(name, vec![IN as i64], vec![OUT as i64]), w, vec![bias; OUT]).unwrap())
}

fn local(entry: &str, backend: &Arc<LinearBackend>, faults: &str) -> (String, Arc<dyn Instance>) {
    let i = LocalInstance::new(entry, backend.clone(), faults.parse().unwrap()).unwrap();
    (entry.to_string(), Arc::new(i) as Arc<dyn Instance>)
}

fn config(deployed: &[&str], parity: &[&str]) -> FrontendConfig {
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    FrontendConfig {
        parity: strings(parity),
        parity_model: "parity".into(),
        group_timeout: Duration::from_millis(200),
        straggler: parm_serve::coded::policy::StragglerPolicy::default().with_min(Duration::from_millis(20)),
        decode_grace: Some(Duration::from_millis(2)),
        ..FrontendConfig::new(ModelSpec::fp32("lin", vec![IN as i64], vec![OUT as i64]), strings(deployed))
    }
}

/// In-process deployed instances f0 (each call held 20 s) and f1, and a parity instance; k = 2.
/// Returns the frontend, f1 and the parity model.
async fn stalled_cluster() -> (Frontend, Arc<LinearBackend>, Arc<LinearBackend>) {
    let (f0, f1, fp) = (linear("deployed", 1.0), linear("deployed", 1.0), linear("parity", 2.0));
    let cfg = FrontendConfig {
        inproc: [local("inproc:f0", &f0, "delay_ms=20000,prob=1.0"), local("inproc:f1", &f1, ""), local("inproc:p", &fp, "")]
            .into_iter()
            .collect(),
        ..config(&["inproc:f0", "inproc:f1"], &["inproc:p"])
    };
    let frontend = Frontend::start(cfg).unwrap();
    frontend.warm_up().await;
    (frontend, f1, fp)
}

#[tokio::test]
async fn a_stalled_in_process_instance_is_answered_by_reconstruction() {
    let (frontend, f1, fp) = stalled_cluster().await;
    let queries: Vec<Vec<f32>> = (0..6).map(|i| (0..IN).map(|j| i as f32 - j as f32 * 0.25).collect()).collect();
    let calls = queries.iter().map(|q| tokio::time::timeout(Duration::from_secs(5), frontend.predict(q.clone())));
    let answers = futures::future::join_all(calls).await;
    let mut reconstructed = 0;
    for (q, a) in queries.iter().zip(answers) {
        let p = a.expect("answered within 5 s, not after the 20 s stall").unwrap();
        assert_eq!(p.output, f1.forward(q, 1).unwrap(), "exact, from either path");
        reconstructed += usize::from(p.reconstructed);
    }
    assert!(reconstructed >= 2, "the stalled instance's queries were reconstructed ({reconstructed})");
    assert!(fp.calls() >= 2 && f1.calls() >= 3);
    let up: Vec<_> = frontend.instances().into_iter().map(|(role, addr, _)| (role, addr)).collect();
    assert!(up.contains(&("parity", "inproc:p".to_string())), "{up:?}");
}

#[tokio::test]
async fn an_inproc_entry_without_an_instance_is_refused_at_start() {
    let f = linear("deployed", 1.0);
    let cfg = FrontendConfig { inproc: [local("inproc:a", &f, "")].into_iter().collect(), ..config(&["inproc:a", "inproc:b"], &[]) };
    let err = Frontend::start(cfg).err().expect("inproc:b has no instance").to_string();
    assert!(err.contains("inproc:b") && err.contains("no in-process instance"), "{err}");
}

/// Calls kept after their queries were reconstructed are bounded (`parm_late_calls`): past
/// 64, the originals are dropped out of the stalled instance's queue, as ParM cancels them.
#[tokio::test]
async fn calls_kept_after_reconstruction_are_bounded_and_the_rest_cancelled() {
    let (frontend, f1, _) = stalled_cluster().await;
    let query = |i: usize| (0..IN).map(|j| i as f32 * 0.5 - j as f32).collect::<Vec<f32>>();
    let calls = (0..300).map(|i| tokio::time::timeout(Duration::from_secs(10), frontend.predict(query(i))));
    for (i, a) in futures::future::join_all(calls).await.into_iter().enumerate() {
        assert_eq!(a.expect("answered in time").unwrap().output, f1.forward(&query(i), 1).unwrap());
    }
    let stats = frontend.stats();
    let (late, cancelled) = (stats.late_calls.load(Ordering::Relaxed), stats.cancelled_originals.load(Ordering::Relaxed));
    assert!(late <= 64, "{late} calls kept");
    assert!(cancelled >= 150 - 64 - 1, "the stalled instance's other originals were dropped: {cancelled}");
}
