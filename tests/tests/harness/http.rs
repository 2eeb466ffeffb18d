//! Building blocks of test configs and plain HTTP calls.

use super::*;

/// A cluster table for the given upstreams.
pub fn cluster(name: &str, upstreams: &[&EchoServer], extra: &str) -> String {
    let eps: Vec<String> = upstreams
        .iter()
        .map(|u| format!("\"{}\"", u.addr()))
        .collect();
    format!(
        "[clusters.{name}]\nendpoints = [{}]\n{extra}\n",
        eps.join(", ")
    )
}

/// Plain client (HTTP/1.1).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

/// GET returning (status, JSON body).
pub async fn get_json(client: &reqwest::Client, url: &str) -> (u16, serde_json::Value) {
    let resp = client.get(url).send().await.expect("request");
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(serde_json::Value::Null);
    (status, body)
}

/// GET returning the body as text.
pub async fn get_text(client: &reqwest::Client, url: &str) -> String {
    let resp = client.get(url).send().await.expect("request");
    resp.text().await.expect("text body")
}

/// Waits until `gw`'s last reload attempt was rejected; returns its `/config` status.
pub async fn wait_rejected(
    client: &reqwest::Client,
    gw: &Gateway,
    deadline: Duration,
) -> serde_json::Value {
    eventually("the document's rejection", deadline, || async {
        let (_, j) = get_json(client, &gw.admin_url("/config")).await;
        if j["last_attempt"]["result"] == "rejected" {
            Ok(j)
        } else {
            Err(j.to_string())
        }
    })
    .await
}
