//! The Events service: the Play API's third job, tracking playback. `POST /events` takes a
//! batch of start / stop / heartbeat events and appends each to a Redis stream (`XADD`, the
//! stream capped near `max_len` entries); `GET /events/recent?count=N` reads the newest back.
//!
//! Non-critical traffic by design: the gateway's `config/playback.toml` ranks `/api/events`
//! lowest, so under overload these batches are shed first and playback keeps working. The
//! Redis connection is opened on first use and re-opened after failures, so the service
//! starts without Redis and answers 503 `store_unavailable` until it is reachable.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

use crate::service::{error, ApiError};

/// Most events one batch may carry.
pub const MAX_BATCH: usize = 500;
/// Longest text field (title, session, device) in bytes.
const MAX_FIELD: usize = 128;

/// Where events go.
pub struct EventStore {
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
    stream: String,
    max_len: u64,
    timeout: Duration,
}

impl std::fmt::Debug for EventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStore")
            .field("stream", &self.stream)
            .field("max_len", &self.max_len)
            .field("connected", &self.conn.initialized())
            .finish()
    }
}

/// One playback event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaybackEvent {
    /// `start`, `stop` or `heartbeat`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The title played.
    pub title: String,
    /// The playback session.
    pub session: String,
    /// Position in the title, in ms.
    #[serde(default)]
    pub position_ms: u64,
    /// The device, when the client says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// A batch, as `POST /events` takes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    /// The events, oldest first.
    pub events: Vec<PlaybackEvent>,
}

impl PlaybackEvent {
    fn validate(&self, i: usize) -> Result<(), String> {
        if !matches!(self.kind.as_str(), "start" | "stop" | "heartbeat") {
            return Err(format!(
                "events[{i}].type `{}` is not start, stop or heartbeat",
                self.kind
            ));
        }
        for (name, v) in [
            ("title", Some(&self.title)),
            ("session", Some(&self.session)),
            ("device", self.device.as_ref()),
        ] {
            match v {
                Some(v) if v.is_empty() || v.len() > MAX_FIELD => {
                    return Err(format!("events[{i}].{name} must be 1 to {MAX_FIELD} bytes"));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Checks a batch: 1 to [`MAX_BATCH`] events, each well formed.
pub fn validate(batch: &Batch) -> Result<(), String> {
    if batch.events.is_empty() || batch.events.len() > MAX_BATCH {
        return Err(format!(
            "a batch carries 1 to {MAX_BATCH} events, not {}",
            batch.events.len()
        ));
    }
    batch
        .events
        .iter()
        .enumerate()
        .try_for_each(|(i, e)| e.validate(i))
}

impl EventStore {
    /// A store on the Redis at `url` (`redis://HOST:PORT`), appending to `stream`.
    pub fn new(url: &str, stream: &str, max_len: u64) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("redis address `{url}`: {e}"))?;
        Ok(Self {
            client,
            conn: OnceCell::new(),
            stream: stream.to_owned(),
            max_len,
            timeout: Duration::from_millis(500),
        })
    }

    async fn connection(&self) -> redis::RedisResult<ConnectionManager> {
        self.conn
            .get_or_try_init(|| async {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(self.timeout)
                    .set_response_timeout(self.timeout)
                    .set_number_of_retries(1);
                ConnectionManager::new_with_config(self.client.clone(), config).await
            })
            .await
            .cloned()
    }

    /// Appends the batch in one pipeline; the ids Redis gave.
    pub async fn append(
        &self,
        user: Option<&str>,
        events: &[PlaybackEvent],
    ) -> redis::RedisResult<Vec<String>> {
        let mut conn = self.connection().await?;
        let mut pipe = redis::pipe();
        for e in events {
            let cmd = pipe
                .cmd("XADD")
                .arg(&self.stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(self.max_len)
                .arg("*")
                .arg("type")
                .arg(&e.kind)
                .arg("title")
                .arg(&e.title)
                .arg("session")
                .arg(&e.session)
                .arg("position_ms")
                .arg(e.position_ms);
            if let Some(d) = &e.device {
                cmd.arg("device").arg(d);
            }
            if let Some(u) = user {
                cmd.arg("user").arg(u);
            }
        }
        pipe.query_async(&mut conn).await
    }

    /// The newest `count` entries, newest first, as field maps with their id.
    pub async fn recent(&self, count: usize) -> redis::RedisResult<Vec<serde_json::Value>> {
        let mut conn = self.connection().await?;
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XREVRANGE")
            .arg(&self.stream)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut conn)
            .await?;
        Ok(entries
            .into_iter()
            .map(|(id, fields)| {
                let mut m = serde_json::Map::new();
                m.insert("id".into(), id.into());
                for (k, v) in fields {
                    m.insert(k, v.into());
                }
                serde_json::Value::Object(m)
            })
            .collect())
    }
}

/// `GET /events/recent` query.
#[derive(Debug, Deserialize)]
struct RecentQuery {
    count: Option<usize>,
}

/// The Events API.
pub fn router(store: Arc<EventStore>) -> Router {
    Router::new()
        .route("/events", post(append))
        .route("/events/recent", get(recent))
        .with_state(store)
}

fn unavailable(e: &redis::RedisError) -> ApiError {
    eprintln!("events: the event store is unavailable: {e}");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        "the event store (Redis) is not reachable; retry later",
    )
}

async fn append(
    State(store): State<Arc<EventStore>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let batch: Batch = serde_json::from_slice(&body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "invalid_batch",
            format!("the body is not an event batch ({{\"events\": [...]}}): {e}"),
        )
    })?;
    validate(&batch).map_err(|m| error(StatusCode::BAD_REQUEST, "invalid_batch", m))?;
    // Set by the gateway from the verified token (x-user-id), never trusted from elsewhere.
    let user = headers.get("x-user-id").and_then(|v| v.to_str().ok());
    let ids = store
        .append(user, &batch.events)
        .await
        .map_err(|e| unavailable(&e))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "accepted": ids.len(), "stream": store.stream, "ids": ids })),
    ))
}

async fn recent(
    State(store): State<Arc<EventStore>>,
    Query(q): Query<RecentQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let count = q.count.unwrap_or(20).clamp(1, 1000);
    let entries = store.recent(count).await.map_err(|e| unavailable(&e))?;
    Ok(Json(serde_json::json!({ "events": entries })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str) -> PlaybackEvent {
        PlaybackEvent {
            kind: kind.into(),
            title: "t1".into(),
            session: "s".into(),
            position_ms: 0,
            device: None,
        }
    }

    #[test]
    fn batches_are_checked() {
        assert!(validate(&Batch {
            events: vec![event("start"), event("heartbeat")]
        })
        .is_ok());
        let e = validate(&Batch { events: vec![] }).expect_err("empty");
        assert!(e.contains("1 to 500"), "{e}");
        let e = validate(&Batch {
            events: vec![event("seek")],
        })
        .expect_err("kind");
        assert!(e.contains("events[0].type `seek`"), "{e}");
        let mut long = event("stop");
        long.title = "x".repeat(200);
        assert!(validate(&Batch { events: vec![long] }).is_err());
        let many = Batch {
            events: vec![event("start"); MAX_BATCH + 1],
        };
        assert!(validate(&many).is_err());
    }
}
