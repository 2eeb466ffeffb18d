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
