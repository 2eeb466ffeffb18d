//! SIGTERM: stop accepting, finish in-flight requests, exit.

mod harness;

use std::time::{Duration, Instant};

use harness::*;

#[tokio::test]
async fn sigterm_finishes_the_in_flight_request_then_exits() {
    let slow = echo("slow").await;
    let body = format!(
        "{}[[routes]]\nname = \"all\"\ncluster = \"slow\"\n",
        cluster("slow", &[&slow], "")
    );
    let mut gw = Gateway::start(&body).await;

    let in_flight = tokio::spawn(client().get(gw.url("/?delay_ms=1500")).send());
    wait_until(
        "the slow request to reach the upstream",
        Duration::from_secs(5),
        || slow.hits() == 1,
    )
    .await;
    let t0 = Instant::now();
    gw.terminate();

    // Readiness flips to 503 while draining, so load balancers stop sending.
    let http = client();
    let mut saw_draining = false;
    while gw.is_running() && t0.elapsed() < Duration::from_secs(5) {
        if let Ok(r) = http.get(gw.admin_url("/readyz")).send().await {
            if r.status().as_u16() == 503 {
                saw_draining = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(saw_draining, "readiness reported draining");

    let resp = in_flight
        .await
        .expect("join")
        .expect("in-flight request completed");
    assert_eq!(
        resp.status().as_u16(),
        200,
        "in-flight request finished normally"
    );
    let status = gw.wait_exit(Duration::from_secs(8)).await;
    assert!(status.success(), "clean exit: {status}");
    // It exits once idle, well before the 10 s grace period.
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "exited after {:?}",
        t0.elapsed()
    );
    assert!(
        std::net::TcpStream::connect(gw.http).is_err(),
        "no longer accepting"
    );
    assert!(gw
        .log()
        .contains("drained: all in-flight requests finished"));
}
