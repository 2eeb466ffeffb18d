//! The admin API: health, readiness, routes and clusters as JSON.

mod harness;

use harness::*;

#[tokio::test]
async fn admin_endpoints_describe_the_running_gateway() {
    let (a, b) = (echo("a").await, echo("b").await);
    let body = format!(
        "{}[[routes]]\nname = \"titles\"\ncluster = \"cat\"\npath_template = \"/titles/{{id}}\"\nmethods = [\"GET\"]\n",
        cluster("cat", &[&a, &b], "load_balancing = \"round_robin\"")
    );
    let gw = Gateway::start(&body).await;
    let http = client();

    assert_eq!(
        get_json(&http, &gw.admin_url("/healthz")).await,
        (200, serde_json::json!({"status": "ok"}))
    );
    let (s, ready) = get_json(&http, &gw.admin_url("/readyz")).await;
    assert_eq!(s, 200);
    assert_eq!(ready["ready"], true);

    let (_, routes) = get_json(&http, &gw.admin_url("/routes")).await;
    let r = &routes["routes"][0];
    assert_eq!(r["name"], "titles");
    assert_eq!(r["cluster"], "cat");
    assert_eq!(r["path"], "template /titles/{id}");
    assert_eq!(r["methods"], serde_json::json!(["GET"]));

    for _ in 0..4 {
        assert_eq!(
            http.get(gw.url("/titles/1"))
                .send()
                .await
                .expect("req")
                .status()
                .as_u16(),
            200
        );
    }
    // In-flight counts drop just after the client has its response, so poll for them.
    let clusters = eventually(
        "in-flight counts back to 0",
        std::time::Duration::from_secs(5),
        || async {
            let (_, clusters) = get_json(&http, &gw.admin_url("/clusters")).await;
            let idle = clusters["clusters"][0]["endpoints"]
                .as_array()
                .is_some_and(|eps| eps.iter().all(|e| e["in_flight"] == 0));
            if idle {
                Ok(clusters)
            } else {
                Err(clusters.to_string())
            }
        },
    )
    .await;
    let c = &clusters["clusters"][0];
    assert_eq!(c["name"], "cat");
    assert_eq!(c["ready"], true);
    assert_eq!(c["load_balancing"], "round_robin");
    let eps = c["endpoints"].as_array().expect("endpoints");
    assert_eq!(eps.len(), 2);
    let total: u64 = eps.iter().filter_map(|e| e["requests"].as_u64()).sum();
    assert_eq!(total, 4);
    assert!(
        eps.iter()
            .all(|e| e["in_flight"] == 0 && e["failures"] == 0),
        "{c}"
    );

    let (s, nf) = get_json(&http, &gw.admin_url("/nope")).await;
    assert_eq!(s, 404);
    assert_eq!(nf["error"], "not_found");
}
