//! `parm serve` with codes beyond ParM's single parity, as a process: code flags that do not
//! fit together stop it at once with the reason and a non-zero exit (no panic), and the
//! Berrut code (`--code berrut`, no parity model) answers the queries of a slow `parm worker`
//! from an extra worker running the deployed model.

mod support;

use std::time::{Duration, Instant};

use parm_bench::cluster::{InstanceSpec, start_instance};
use parm_nn::ModelKind;
use serde_json::Value;
use support::{DEPLOYED, close, exe, infer_body, output, start_serve, write_model};

/// Runs `parm serve ARGS` and returns its exit status and stderr (it must exit within 20 s:
/// bad flags are refused before any instance is waited for).
fn serve_refused(args: &[&str]) -> (std::process::ExitStatus, String) {
    let mut child = std::process::Command::new(exe())
        .arg("serve")
        .args(["--listen", "127.0.0.1:0", "--grpc-listen", "off"])
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(20) {
            child.kill().unwrap();
            panic!("parm serve {args:?} still running after 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Query i of a test: 784 values in [0, 1), different for every i.
fn query(i: usize) -> Vec<f32> {
    (0..784).map(|t| ((t * 7 + i * 13) % 17) as f32 / 17.0).collect()
}

/// POSTs query i to the OIP inference `url`.
async fn post(client: &reqwest::Client, url: &str, i: usize) -> reqwest::Response {
    client.post(url).json(&infer_body(&i.to_string(), &query(i))).send().await.unwrap()
}

/// `parm serve ARGS` exits non-zero with `reason` on stderr, and no panic.
fn assert_refused(args: &[&str], reason: &str) {
    let (status, stderr) = serve_refused(args);
    assert!(!status.success(), "{args:?}: exit {status}");
    assert!(stderr.contains(reason), "{args:?}: stderr {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
}

#[test]
fn code_flags_that_do_not_fit_exit_non_zero_with_the_reason() {
    let deployed = ["--deployed", "127.0.0.1:9"];
    for (args, reason) in [
        (&["--parities", "3", "--parity", "127.0.0.1:10", "--parity", "127.0.0.1:11"][..], "--parities 3 needs 3 lists"),
        (&["--code", "berrut", "--parity", "127.0.0.1:10", "--extra-instances", "127.0.0.1:11"][..], "needs no parity model"),
        (&["--code", "berrut"][..], "needs --extra-instances"),
        (&["--extra", "2", "--parity", "127.0.0.1:10"][..], "for --code berrut"),
        (&["--code", "reed-solomon"][..], "expected parity, collage or berrut"),
    ] {
        assert_refused(&[&deployed[..], args].concat(), reason);
    }
}

#[test]
fn berrut_answers_a_slow_instance_s_queries_without_a_parity_model() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_model(dir.path(), DEPLOYED, ModelKind::Deployed);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let spec = |fault: &str| InstanceSpec {
            model: model.clone(),
            name: DEPLOYED.into(),
            fault: fault.into(),
            listen: None,
            netns: None,
            cpus: None,
        };
        let slow = start_instance(exe(), spec("delay_ms=1000,prob=1,seed=1")).await.unwrap();
        let fast = start_instance(exe(), spec("")).await.unwrap();
        let extra = start_instance(exe(), spec("")).await.unwrap();
        let deployed = format!("{},{}", slow.addr, fast.addr);
        let args = ["--deployed", &deployed, "--k", "2", "--code", "berrut", "--extra", "1", "--extra-instances", &extra.addr];
        let served = start_serve(&[&args[..], &["--model-name", "m", "--group-timeout-ms", "50"]].concat()).await;
        let url = format!("http://{}/v2/models/m/infer", served.addr);
        let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
        let mut reconstructed = 0;
        for pair in 0..4 {
            // Two queries at once fill a coding group: one goes to the slow instance.
            let start = Instant::now();
            let send = |i: usize| post(&client, &url, i);
            let (a, b) = tokio::join!(send(2 * pair), send(2 * pair + 1));
            assert!(start.elapsed() < Duration::from_millis(800), "pair {pair}: waited for the slow instance");
            for resp in [a, b] {
                assert_eq!(resp.status(), 200);
                let body: Value = resp.json().await.unwrap();
                let out = output(&body);
                assert!(out.len() == 10 && out.iter().all(|v| v.is_finite()), "{body}");
                reconstructed += usize::from(body["parameters"]["parm_reconstructed"] == true);
            }
        }
        // Every query on the slow instance, at least (round robin: one of each pair); a fast
        // one may be too if its own group's blended output beat it by the decode grace.
        assert!(reconstructed >= 4, "every slow query interpolated: {reconstructed}");
        drop((served, slow, fast, extra));
    });
}

#[test]
fn check_flags_that_do_not_fit_exit_non_zero_with_the_reason() {
    let deployed = ["--deployed", "127.0.0.1:9"];
    for (args, reason) in [
        (&["--check-outputs"][..], "need parity instances"),
        (&["--check-outputs", "--code", "berrut", "--extra-instances", "127.0.0.1:11"][..], "Berrut"),
        (&["--check-outputs", "--parity", "127.0.0.1:10", "--check-threshold", "0.5"][..], "threshold"),
        (&["--check-outputs", "--parity", "127.0.0.1:10", "--eject-for-s=-1"][..], "--eject-for-s"),
    ] {
        assert_refused(&[&deployed[..], args].concat(), reason);
    }
}

/// One of seven workers negates and scales every output (`--fault wrong=1`); `parm serve
/// --check-outputs` finds it from its coding groups, ejects it, says so in /metrics and the
/// repository index, and from then on every answer it gets from an instance is F's own.
#[test]
fn check_outputs_ejects_a_worker_that_returns_wrong_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_model(dir.path(), DEPLOYED, ModelKind::Deployed);
    let (net, _) = parm_nn::train::load_net(&model, &burn::tensor::Device::flex()).unwrap();
    let truth = |x: &[f32]| parm_nn::DeployedModel::outputs(&net, x, 1).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let spec = |name: &str, fault: &str| InstanceSpec {
            model: model.clone(),
            name: name.into(),
            fault: fault.into(),
            listen: None,
            netns: None,
            cpus: None,
        };
        let bad = start_instance(exe(), spec(DEPLOYED, "wrong=1,wrong_kind=scale,wrong_scale=-50,seed=1")).await.unwrap();
        let mut deployed = vec![bad];
        // Six healthy ones: with r = 1 only the two that pair with the faulty one share its
        // blame, so the others' median share stays far below its own.
        for _ in 0..6 {
            deployed.push(start_instance(exe(), spec(DEPLOYED, "")).await.unwrap());
        }
        // The parity model is F itself: inexact for a nonlinear F, but far closer than -50 F.
        let parity = start_instance(exe(), spec(support::PARITY, "")).await.unwrap();
        let addrs = deployed.iter().map(|w| w.addr.clone()).collect::<Vec<_>>().join(",");
        let args = ["--deployed", &addrs, "--parity", &parity.addr, "--k", "2", "--check-outputs", "--check-window", "10"];
        let served = start_serve(&[&args[..], &["--model-name", "m", "--group-timeout-ms", "50"]].concat()).await;
        let base = format!("http://{}", served.addr);
        let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
        let pairs = |from: usize, n: usize| {
            let (client, url) = (client.clone(), format!("{base}/v2/models/m/infer"));
            async move {
                let mut wrong = 0;
                for pair in from..from + n {
                    let (a, b) = tokio::join!(post(&client, &url, 2 * pair), post(&client, &url, 2 * pair + 1));
                    let (a, b) = ((2 * pair, a), (2 * pair + 1, b));
                    for (i, resp) in [a, b] {
                        assert_eq!(resp.status(), 200);
                        let body: Value = resp.json().await.unwrap();
                        // A reconstruction is approximate (here very: F is untrained and its own
                        // parity model); an original must be exact.
                        let original = body["parameters"]["parm_reconstructed"] != true;
                        wrong += usize::from(original && !support::close(&output(&body), &truth(&query(i))));
                    }
                }
                wrong
            }
        };
        let before = pairs(0, 40).await;
        assert!(before > 0, "the faulty worker's outputs reached clients before it was found");
        // A group is checked once its parity output is in too, which may be well after its
        // answers: under load the one parity worker, with 3.5x any deployed worker's queries,
        // ran 23 groups behind. So wait (10 s at most) for the checks to eject someone.
        let mut metrics = String::new();
        for _ in 0..100 {
            metrics = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
            if metrics.lines().any(|l| l.starts_with("parm_ejections_total") && !l.ends_with(" 0")) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let line = |name: &str| metrics.lines().find(|l| l.starts_with(name)).unwrap_or_default().to_string();
        let checks = metrics.lines().filter(|l| l.starts_with("parm_") && !l.contains("_bucket")).collect::<Vec<_>>().join("\n");
        assert!(line("parm_ejections_total").ends_with(" 1"), "{checks}");
        let ejected = metrics.lines().find(|l| l.starts_with("parm_instance_ejected") && l.contains(&deployed[0].addr)).unwrap();
        assert!(ejected.ends_with(" 1"), "{ejected}");
        assert!(line("parm_output_checks_total").split(' ').next_back().unwrap().parse::<f64>().unwrap() >= 20.0);
        let index: Value = client.post(format!("{base}/v2/repository/index")).send().await.unwrap().json().await.unwrap();
        assert_eq!(index[0]["ejected_instances"], serde_json::json!([deployed[0].addr]), "{index}");
        assert_eq!(pairs(40, 20).await, 0, "every original answer is F's own once the faulty worker is out");
        drop((served, deployed, parity));
    });
}

/// `parm serve --code collage`: a slow worker's queries are answered by the collage model's
/// cell for them (its output for the tiled parity query, block j for member j), exactly.
#[test]
fn collage_answers_a_slow_instance_s_queries_from_their_cell() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_model(dir.path(), DEPLOYED, ModelKind::Deployed);
    let collage = support::write_collage_model(dir.path(), "parity-k2-collage", 2);
    let (net, _) = parm_nn::train::load_net(&collage, &burn::tensor::Device::flex()).unwrap();
    let encoder = parm_codes::encoder_for_shape("concatenation", 2, &[784]).unwrap();
    // Block j of the collage model's output on the group [a, b] (or [b, a]).
    let cell = |first: &[f32], second: &[f32], j: usize| -> Vec<f32> {
        let p = encoder.encode(&[first, second]).unwrap();
        parm_nn::DeployedModel::outputs(&net, &p, 1).unwrap()[j * 10..(j + 1) * 10].to_vec()
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let spec = |path: &std::path::Path, name: &str, fault: &str| InstanceSpec {
            model: path.to_path_buf(),
            name: name.into(),
            fault: fault.into(),
            listen: None,
            netns: None,
            cpus: None,
        };
        let slow = start_instance(exe(), spec(&model, DEPLOYED, "delay_ms=1000,prob=1,seed=1")).await.unwrap();
        let fast = start_instance(exe(), spec(&model, DEPLOYED, "")).await.unwrap();
        let parity = start_instance(exe(), spec(&collage, "parity-k2-collage", "")).await.unwrap();
        let deployed = format!("{},{}", slow.addr, fast.addr);
        let args = ["--deployed", &deployed, "--k", "2", "--code", "collage", "--parity", &parity.addr];
        let served = start_serve(&[&args[..], &["--model-name", "m", "--group-timeout-ms", "50"]].concat()).await;
        let url = format!("http://{}/v2/models/m/infer", served.addr);
        let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
        let mut reconstructed = 0;
        for pair in 0..4 {
            let start = Instant::now();
            let send = |i: usize| post(&client, &url, i);
            let (a, b) = (2 * pair, 2 * pair + 1);
            let (ra, rb) = tokio::join!(send(a), send(b));
            assert!(start.elapsed() < Duration::from_millis(800), "pair {pair}: waited for the slow instance");
            for (me, other, resp) in [(a, b, ra), (b, a, rb)] {
                assert_eq!(resp.status(), 200);
                let body: Value = resp.json().await.unwrap();
                if body["parameters"]["parm_reconstructed"] == true {
                    reconstructed += 1;
                    let got = output(&body);
                    let (x, y) = (query(me), query(other));
                    assert!(
                        support::close(&got, &cell(&x, &y, 0)) || support::close(&got, &cell(&y, &x, 1)),
                        "pair {pair}: query {me}'s answer is not its collage cell: {got:?}"
                    );
                }
            }
        }
        assert!(reconstructed >= 4, "every slow query answered from its cell: {reconstructed}");
        drop((served, slow, fast, parity));
    });
}

#[test]
fn collage_flags_that_do_not_fit_exit_non_zero_with_the_reason() {
    let deployed = ["--deployed", "127.0.0.1:9"];
    for (args, reason) in [
        (&["--code", "collage", "--parities", "2", "--parity", "127.0.0.1:10", "--parity", "127.0.0.1:11"][..], "one collage model"),
        (&["--code", "collage", "--encoder", "linear-r2-p0", "--parity", "127.0.0.1:10"][..], "tiles the queries itself"),
        (&["--code", "collage", "--parity", "127.0.0.1:10", "--check-outputs"][..], "not checked"),
    ] {
        assert_refused(&[&deployed[..], args].concat(), reason);
    }
}

/// `parm serve --deployed inproc:MODEL --parity inproc:PARITY`: both models run in the
/// frontend's own process, with no worker; the answers are F's own, the instances count as up,
/// and an entry whose file cannot be loaded stops the server with the entry named.
#[test]
fn in_process_instances_serve_the_model_without_workers() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_model(dir.path(), DEPLOYED, ModelKind::Deployed);
    let parity = write_model(dir.path(), "parity-k2-addition", ModelKind::Parity);
    let (net, _) = parm_nn::train::load_net(&model, &burn::tensor::Device::flex()).unwrap();
    let truth = |x: &[f32]| parm_nn::DeployedModel::outputs(&net, x, 1).unwrap();
    let (deployed, parity) = (format!("inproc:{}", model.display()), format!("inproc:{}", parity.display()));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let served = start_serve(&["--deployed", &deployed, "--parity", &parity, "--model-name", "m"]).await;
        let url = format!("http://{}/v2/models/m/infer", served.addr);
        let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
        let answers = futures::future::join_all((0..6).map(|i| post(&client, &url, i))).await;
        let mut exact = 0;
        for (i, resp) in answers.into_iter().enumerate() {
            assert_eq!(resp.status(), 200);
            let body: Value = resp.json().await.unwrap();
            if body["parameters"]["parm_reconstructed"] != true {
                assert!(close(&output(&body), &truth(&query(i))), "query {i}: {body}");
                exact += 1;
            }
        }
        assert!(exact >= 3, "healthy in-process lanes answer most queries themselves: {exact} of 6");
        let metrics = client.get(format!("http://{}/metrics", served.addr)).send().await.unwrap().text().await.unwrap();
        for entry in [&deployed, &parity] {
            assert!(metrics.contains(&format!("instance=\"{entry}\"}} 1")), "{entry} up in /metrics");
        }
    });
    let missing = dir.path().join("missing.bpk");
    let missing = format!("inproc:{}", missing.display());
    assert_refused(&["--deployed", &missing], &missing);
}
