//! schemathesis (PyPI) against a live `runlane api`: generated requests from /openapi.json, with
//! an operator token and with a worker token, must never get a 5xx or a response that breaks the
//! documented schema. CI installs schemathesis; elsewhere the test says how and passes over.

use runlane_tests::TestDb;
use runlane_tests::api::token;
use runlane_tests::process::{PATIENCE, WorkerProc, wait_until};
use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_runlane");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_errors_and_no_schema_violations() {
    if Command::new("schemathesis").arg("--version").output().is_err() {
        assert!(std::env::var("CI").is_err(), "CI must run schemathesis: pip install schemathesis");
        eprintln!("schemathesis is not installed (pip install schemathesis): not run");
        return;
    }
    let t = TestDb::new().await;
    t.apply_noop().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    let listen = format!("127.0.0.1:{port}");
    let env = [("RUNLANE__API__RATE_PER_S", "100000"), ("RUNLANE__API__RATE_BURST", "100000"), ("RUNLANE_LOG", "warn")];
    let api = WorkerProc::start(Path::new(BIN), &["api", "--listen", &listen], Some(&t.url), "api", &env);
    let base = format!("http://{listen}");
    wait_until("the API", PATIENCE, || async {
        reqwest::get(format!("{base}/readyz")).await.ok().filter(|r| r.status().is_success()).map(|_| ())
    })
    .await;
    for role in ["operator", "worker"] {
        let (_, tok) = token(&t.pool, role, None).await;
        let out = tokio::task::spawn_blocking({
            let base = base.clone();
            move || {
                // Its crash cache goes to a scratch directory, not into the source tree.
                Command::new("schemathesis")
                    .current_dir(std::env::temp_dir())
                    .args(["run", &format!("{base}/openapi.json"), "--header", &format!("Authorization: Bearer {tok}")])
                    .args([
                        "--checks",
                        "not_a_server_error,response_schema_conformance",
                        "--max-examples",
                        "15",
                        "--seed",
                        "7",
                    ])
                    .args(["--phases", "examples,coverage,fuzzing", "--no-color"])
                    .output()
                    .expect("run schemathesis")
            }
        })
        .await
        .expect("schemathesis task");
        let report = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "schemathesis with a {role} token:\n{report}\n--- api log ---\n{}", api.log());
        assert!(report.contains("Tested"), "schemathesis ran nothing:\n{report}");
    }
}
