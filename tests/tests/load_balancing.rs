//! Load spread over a cluster: power-of-two-choices least-request, (weighted) round robin,
//! consistent hashing.

mod harness;

use harness::*;

async fn hits_after(gw: &Gateway, path: &str, n: usize, header: Option<(&str, String)>) {
    let http = client();
    for _ in 0..n {
        let mut req = http.get(gw.url(path));
        if let Some((k, v)) = &header {
            req = req.header(*k, v);
        }
        assert_eq!(req.send().await.expect("req").status().as_u16(), 200);
    }
}

#[tokio::test]
async fn round_robin_is_exact_and_weighted() {
    let (a, b, c) = (echo("a").await, echo("b").await, echo("c").await);
    let body = format!(
        "[clusters.rr]\nendpoints = [\"{}\", \"{}\", {{ address = \"{}\", weight = 2 }}]\nload_balancing = \"round_robin\"\n\n\
         [[routes]]\nname = \"all\"\ncluster = \"rr\"\n",
        a.addr(),
        b.addr(),
        c.addr()
    );
    let gw = Gateway::start(&body).await;
    hits_after(&gw, "/", 40, None).await;
    assert_eq!((a.hits(), b.hits(), c.hits()), (10, 10, 20));
}

#[tokio::test]
async fn least_request_spreads_and_avoids_slow_endpoints() {
    let (a, b, c) = (echo("a").await, echo("b").await, echo("c").await);
    let body = format!(
        "{}[[routes]]\nname = \"all\"\ncluster = \"p2c\"\n",
        cluster("p2c", &[&a, &b, &c], "")
    );
    let gw = Gateway::start(&body).await;
    hits_after(&gw, "/", 90, None).await;
    for (name, h) in [("a", a.hits()), ("b", b.hits()), ("c", c.hits())] {
        assert!(
            h >= 10,
            "sequential requests spread over every endpoint; {name} got {h}"
        );
    }

    // While `a` holds slow requests, new requests go to the idle endpoints.
    let http = client();
    let slow_url = gw.url("/?delay_ms=1500");
    let before = (a.hits(), b.hits(), c.hits());
    let mut slow = Vec::new();
    for _ in 0..6 {
        slow.push(tokio::spawn(http.get(slow_url.clone()).send()));
    }
    let cl = &(a.hits(), b.hits(), c.hits());
    wait_until(
        "slow requests to arrive",
        std::time::Duration::from_secs(5),
        || {
            let now = (a.hits(), b.hits(), c.hits());
            (now.0 + now.1 + now.2) - (before.0 + before.1 + before.2) >= 6
        },
    )
    .await;
    let _ = cl;
    let busy = (
        a.hits() - before.0,
        b.hits() - before.1,
        c.hits() - before.2,
    );
    // Least-request keeps the six concurrent slow requests spread (no endpoint gets 5+).
    assert!(
        busy.0 <= 4 && busy.1 <= 4 && busy.2 <= 4,
        "concurrent requests spread: {busy:?}"
    );
    for s in slow {
        assert_eq!(s.await.expect("join").expect("req").status().as_u16(), 200);
    }
}

#[tokio::test]
async fn consistent_hash_sticks_per_key() {
    let (a, b, c) = (echo("a").await, echo("b").await, echo("c").await);
    let body = format!(
        "{}[[routes]]\nname = \"all\"\ncluster = \"sticky\"\n",
        cluster(
            "sticky",
            &[&a, &b, &c],
            "load_balancing = \"consistent_hash\"\nhash_key = \"header:x-user\""
        )
    );
    let gw = Gateway::start(&body).await;
    let http = client();
    let mut owners = std::collections::HashMap::new();
    for user in 0..30 {
        for _ in 0..3 {
            let r = http
                .get(gw.url("/"))
                .header("x-user", format!("user-{user}"))
                .send()
                .await
                .expect("req");
            let inst = r.headers()["x-echo-instance"]
                .to_str()
                .expect("inst")
                .to_owned();
            let first = owners.entry(user).or_insert_with(|| inst.clone());
            assert_eq!(*first, inst, "user-{user} moved between endpoints");
        }
    }
    let distinct: std::collections::HashSet<_> = owners.values().collect();
    assert_eq!(distinct.len(), 3, "30 keys land on all 3 endpoints");
}
