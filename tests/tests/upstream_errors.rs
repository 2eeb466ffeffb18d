//! Upstream failures map to 502 (connect) and 504 (timeout) with a JSON body naming the route.

mod harness;

use harness::*;

#[tokio::test]
async fn connect_failure_is_502_and_timeout_is_504() {
    let slow = echo("slow").await;
    // A port nobody listens on: bound, read, released.
    let dead = dead_endpoint();
    let body = format!(
        "[clusters.dead]\nendpoints = [\"{dead}\"]\nconnect_timeout_ms = 500\n\n\
         {}\
         [[routes]]\nname = \"to-dead\"\ncluster = \"dead\"\npath_prefix = \"/dead\"\n\n\
         [[routes]]\nname = \"to-slow\"\ncluster = \"slow\"\npath_prefix = \"/slow\"\n",
        cluster("slow", &[&slow], "read_timeout_ms = 300"),
    );
    let gw = Gateway::start(&body).await;
    let http = client();

    let r = http.get(gw.url("/dead/x")).send().await.expect("req");
    assert_eq!(r.status().as_u16(), 502);
    assert_eq!(r.headers()["content-type"], "application/json");
    let j: serde_json::Value = r.json().await.expect("json");
    assert_eq!(j["error"], "upstream_connect_failed");
    assert_eq!(j["route"], "to-dead");
    assert_eq!(j["cluster"], "dead");
    assert!(
        !j.to_string().contains(&dead.to_string()),
        "internal address must not leak: {j}"
    );

    let r = http
        .get(gw.url("/slow?delay_ms=3000"))
        .send()
        .await
        .expect("req");
    assert_eq!(r.status().as_u16(), 504);
    let j: serde_json::Value = r.json().await.expect("json");
    assert_eq!(j["error"], "upstream_timeout");
    assert_eq!(j["route"], "to-slow");

    // Fast requests on the same route still succeed, and the upstream's own 5xx is relayed as is.
    let (s, _) = get_json(&http, &gw.url("/slow?delay_ms=10")).await;
    assert_eq!(s, 200);
    let r = http
        .get(gw.url("/slow?status=503"))
        .send()
        .await
        .expect("req");
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(r.headers()["x-echo-instance"], "slow");

    // The failure is visible per endpoint in the admin API.
    let (_, clusters) = get_json(&http, &gw.admin_url("/clusters")).await;
    let dead_cluster = clusters["clusters"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "dead"))
        .expect("dead cluster listed")
        .clone();
    // Two attempts: the default retry policy retries a connect failure once (on the same
    // endpoint, the only one).
    assert_eq!(
        dead_cluster["endpoints"][0]["failures"], 2,
        "{dead_cluster}"
    );
}
