//! The API's health endpoints tell the truth: liveness fails once the database has not answered
//! for the bound, readiness while it does not answer; both recover with it.

use runlane_tests::TestDb;
use runlane_tests::api::TestApi;
use runlane_tests::process::{PATIENCE, wait_until};
use runlane_tests::proxy::Proxy;

async fn wait_for(api: &TestApi, path: &str, want: u16) {
    let url = api.url(path);
    wait_until(&format!("{path} answering {want}"), PATIENCE, || async {
        let status = reqwest::get(&url).await.ok()?.status().as_u16();
        (status == want).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_and_readiness_follow_the_database() {
    let t = TestDb::new().await;
    let upstream = format!("127.0.0.1:{}", t.cluster().port()).parse().expect("addr");
    let proxy = Proxy::start(upstream).await;
    let cut_url = t.url.replace(&format!(":{}/", t.cluster().port()), &format!(":{}/", proxy.addr.port()));
    let pool = sqlx::PgPool::connect(&cut_url).await.expect("pool through the proxy");
    let api = TestApi::start(pool, |s| {
        s.api.liveness_bound_ms = 1_000;
        s.api.db_ping_interval_ms = 200;
    })
    .await;
    wait_for(&api, "/healthz", 200).await;
    wait_for(&api, "/readyz", 200).await;
    proxy.set_blackholed(true);
    wait_for(&api, "/readyz", 503).await;
    wait_for(&api, "/healthz", 503).await;
    proxy.set_blackholed(false);
    wait_for(&api, "/healthz", 200).await;
    wait_for(&api, "/readyz", 200).await;
}
