//! `parm serve` with codes beyond ParM's single parity, as a process: code flags that do not
//! fit together stop it at once with the reason and a non-zero exit (no panic), and the
//! Berrut code (`--code berrut`, no parity model) answers the queries of a slow `parm worker`
//! from an extra worker running the deployed model.

mod support;

use std::time::{Duration, Instant};

use parm_bench::cluster::{InstanceSpec, start_instance};
use parm_nn::ModelKind;
use serde_json::Value;
use support::{DEPLOYED, exe, infer_body, output, start_serve, write_model};

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

#[test]
fn code_flags_that_do_not_fit_exit_non_zero_with_the_reason() {
    let deployed = ["--deployed", "127.0.0.1:9"];
    for (args, reason) in [
        (&["--parities", "3", "--parity", "127.0.0.1:10", "--parity", "127.0.0.1:11"][..], "--parities 3 needs 3 lists"),
        (&["--code", "berrut", "--parity", "127.0.0.1:10", "--extra-instances", "127.0.0.1:11"][..], "needs no parity model"),
        (&["--code", "berrut"][..], "needs --extra-instances"),
        (&["--extra", "2", "--parity", "127.0.0.1:10"][..], "for --code berrut"),
        (&["--code", "reed-solomon"][..], "expected parity or berrut"),
    ] {
        let (status, stderr) = serve_refused(&[&deployed[..], args].concat());
        assert!(!status.success(), "{args:?}: exit {status}");
        assert!(stderr.contains(reason), "{args:?}: stderr {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn berrut_answers_a_slow_instance_s_queries_without_a_parity_model() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_model(dir.path(), DEPLOYED, ModelKind::Deployed);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let spec = |fault: &str| InstanceSpec { model: model.clone(), name: DEPLOYED.into(), fault: fault.into(), listen: None };
        let slow = start_instance(exe(), spec("delay_ms=1000,prob=1,seed=1")).await.unwrap();
        let fast = start_instance(exe(), spec("")).await.unwrap();
        let extra = start_instance(exe(), spec("")).await.unwrap();
        let deployed = format!("{},{}", slow.addr, fast.addr);
        let args = ["--deployed", &deployed, "--k", "2", "--code", "berrut", "--extra", "1", "--extra-instances", &extra.addr];
        let served = start_serve(&[&args[..], &["--model-name", "m", "--group-timeout-ms", "50"]].concat()).await;
        let url = format!("http://{}/v2/models/m/infer", served.addr);
        let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
        let query = |i: usize| -> Vec<f32> { (0..784).map(|t| ((t * 7 + i * 13) % 17) as f32 / 17.0).collect() };
        let mut reconstructed = 0;
        for pair in 0..4 {
            // Two queries at once fill a coding group: one goes to the slow instance.
            let start = Instant::now();
            let send = |i: usize| {
                let (client, url) = (client.clone(), url.clone());
                async move { client.post(&url).json(&infer_body(&i.to_string(), &query(i))).send().await.unwrap() }
            };
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
