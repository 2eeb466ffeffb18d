//! `loadgen`: an open-loop HTTP load client for overload benchmarks.
//!
//! Requests leave at fixed intervals whatever the answers do (no coordinated omission:
//! latency counts from each request's scheduled time), in phases of a given rate and length,
//! spread over priority classes by weight (an exact, interleaved mix). It prints one JSON
//! document: per phase and class the requests sent, answered 2xx, shed (503), other errors,
//! timeouts and latency percentiles of the successful ones; goodput per phase; and the
//! recovery time: after the last phase began, how long until the last request that failed or
//! took over twice its class's first-phase p99.
//!
//! ```text
//! loadgen --base http://127.0.0.1:8080 \
//!   --class critical=/critical:30 --class degraded=/degraded:40 --class non_critical=/low:30 \
//!   --phase before:200:2 --phase overload:800:5 --phase after:200:3
//! ```

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Map, Value};

#[derive(Debug, Parser)]
#[command(about = "Open-loop HTTP load in phases, with priority classes")]
struct Args {
    /// Where requests go: scheme, host and port (`http://127.0.0.1:8080`).
    #[arg(long)]
    base: String,
    /// A class: `NAME=PATH:WEIGHT` (repeat).
    #[arg(long = "class", required = true, value_parser = parse_class)]
    classes: Vec<ClassSpec>,
    /// A phase: `NAME:RATE:SECONDS` (repeat; run in order).
    #[arg(long = "phase", required = true, value_parser = parse_phase)]
    phases: Vec<Phase>,
    /// A request counts as timed out after this long.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
}

#[derive(Debug, Clone)]
struct ClassSpec {
    name: String,
    path: String,
    weight: u32,
}

#[derive(Debug, Clone)]
struct Phase {
    name: String,
    rate: f64,
    seconds: f64,
}

fn parse_class(s: &str) -> Result<ClassSpec, String> {
    let (name, rest) = s.split_once('=').ok_or("use NAME=PATH:WEIGHT")?;
    let (path, weight) = rest.rsplit_once(':').ok_or("use NAME=PATH:WEIGHT")?;
    let weight = weight
        .parse()
        .map_err(|_| format!("weight `{weight}` is not a number"))?;
    if !path.starts_with('/') || weight == 0 {
        return Err("the path starts with / and the weight is above 0".into());
    }
    Ok(ClassSpec {
        name: name.into(),
        path: path.into(),
        weight,
    })
}

fn parse_phase(s: &str) -> Result<Phase, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let [name, rate, seconds] = parts[..] else {
        return Err("use NAME:RATE:SECONDS".into());
    };
    let rate: f64 = rate
        .parse()
        .map_err(|_| format!("rate `{rate}` is not a number"))?;
    let seconds: f64 = seconds
        .parse()
        .map_err(|_| format!("seconds `{seconds}` is not a number"))?;
    if !(rate > 0.0 && seconds > 0.0 && rate <= 100_000.0 && seconds <= 600.0) {
        return Err("rate in (0, 100000] and seconds in (0, 600]".into());
    }
    Ok(Phase {
        name: name.into(),
        rate,
        seconds,
    })
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    Ok,
    Shed,
    Error,
    Timeout,
}

#[derive(Debug, Clone, Copy)]
struct Record {
    phase: usize,
    class: usize,
    /// Scheduled send time since the phase began.
    offset: Duration,
    latency: Duration,
    outcome: Outcome,
}

/// Smooth weighted round robin: an exact, evenly interleaved mix of the classes.
struct Mix {
    weights: Vec<i64>,
    current: Vec<i64>,
    total: i64,
}

impl Mix {
    fn new(classes: &[ClassSpec]) -> Self {
        let weights: Vec<i64> = classes.iter().map(|c| i64::from(c.weight)).collect();
        Self {
            total: weights.iter().sum(),
            current: vec![0; weights.len()],
            weights,
        }
    }

    fn next(&mut self) -> usize {
        for (c, w) in self.current.iter_mut().zip(&self.weights) {
            *c += w;
        }
        let (best, _) = self
            .current
            .iter()
            .enumerate()
            .max_by_key(|(i, c)| (**c, -(*i as i64)))
            .unwrap_or((0, &0));
        self.current[best] -= self.total;
        best
    }
}

fn percentile(h: &Histogram<u64>, q: f64) -> Value {
    if h.is_empty() {
        Value::Null
    } else {
        json!(h.value_at_quantile(q) as f64 / 1000.0)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(20_000)
        .build_http();
    let uris: Vec<http::Uri> = args
        .classes
        .iter()
        .map(|c| {
            format!("{}{}", args.base.trim_end_matches('/'), c.path)
                .parse()
                .unwrap_or_else(|e| {
                    eprintln!("loadgen: `{}{}` is not a URI: {e}", args.base, c.path);
                    std::process::exit(2);
                })
        })
        .collect();
    let timeout = Duration::from_millis(args.timeout_ms);
    let records = Arc::new(Mutex::new(Vec::<Record>::new()));
    let mut mix = Mix::new(&args.classes);
    let mut tasks = tokio::task::JoinSet::new();
    for (p, phase) in args.phases.iter().enumerate() {
        let start = Instant::now();
        let interval = Duration::from_secs_f64(1.0 / phase.rate);
        let count = (phase.rate * phase.seconds).round() as u64;
        for i in 0..count {
            let due = start + interval.mul_f64(i as f64);
            tokio::time::sleep_until(due.into()).await;
            let class = mix.next();
            let client = client.clone();
            let uri = uris[class].clone();
            let records = records.clone();
            tasks.spawn(async move {
                let call = async {
                    let req = http::Request::get(uri)
                        .header("user-agent", "loadgen")
                        .body(Empty::<Bytes>::new())
                        .map_err(|_| ())?;
                    let resp = client.request(req).await.map_err(|_| ())?;
                    let status = resp.status().as_u16();
                    resp.into_body().collect().await.map_err(|_| ())?;
                    Ok::<u16, ()>(status)
                };
                let outcome = match tokio::time::timeout(timeout, call).await {
                    Ok(Ok(s)) if (200..300).contains(&s) => Outcome::Ok,
                    Ok(Ok(503)) => Outcome::Shed,
                    Ok(_) => Outcome::Error,
                    Err(_) => Outcome::Timeout,
                };
                let rec = Record {
                    phase: p,
                    class,
                    offset: due - start,
                    latency: due.elapsed(),
                    outcome,
                };
                records.lock().unwrap_or_else(|e| e.into_inner()).push(rec);
            });
            // Reap finished tasks as we go so the set stays small.
            while tasks.try_join_next().is_some() {}
        }
        // The phase lasts its full length even when its last request left early.
        tokio::time::sleep_until((start + Duration::from_secs_f64(phase.seconds)).into()).await;
    }
    while tasks.join_next().await.is_some() {}
    let records = records.lock().unwrap_or_else(|e| e.into_inner()).clone();
    println!("{}", report(&args, &records));
}

fn report(args: &Args, records: &[Record]) -> Value {
    let n = args.classes.len();
    let mut first_p99 = vec![Duration::ZERO; n];
    let mut phases = Map::new();
    for (p, phase) in args.phases.iter().enumerate() {
        let mut classes = Map::new();
        let mut ok_total = 0u64;
        for (c, class) in args.classes.iter().enumerate() {
            let mut h = Histogram::<u64>::new(3).unwrap_or_else(|_| unreachable_hist());
            let (mut sent, mut ok, mut shed, mut errors, mut timeouts) =
                (0u64, 0u64, 0u64, 0u64, 0u64);
            for r in records.iter().filter(|r| r.phase == p && r.class == c) {
                sent += 1;
                match r.outcome {
                    Outcome::Ok => {
                        ok += 1;
                        let _ = h.record(r.latency.as_micros() as u64);
                    }
                    Outcome::Shed => shed += 1,
                    Outcome::Error => errors += 1,
                    Outcome::Timeout => timeouts += 1,
                }
            }
            ok_total += ok;
            if p == 0 && !h.is_empty() {
                first_p99[c] = Duration::from_micros(h.value_at_quantile(0.99));
            }
            classes.insert(
                class.name.clone(),
                json!({
                    "sent": sent, "ok": ok, "shed": shed, "errors": errors, "timeouts": timeouts,
                    "success": if sent > 0 { ok as f64 / sent as f64 } else { 0.0 },
                    "p50_ms": percentile(&h, 0.5), "p99_ms": percentile(&h, 0.99),
                }),
            );
        }
        phases.insert(
            phase.name.clone(),
            json!({
                "rate": phase.rate, "seconds": phase.seconds,
                "goodput": ok_total as f64 / phase.seconds,
                "classes": classes,
            }),
        );
    }
    // Recovery: in the last phase, the latest scheduled request that failed or was slow.
    let last = args.phases.len().saturating_sub(1);
    let recovery = records
        .iter()
        .filter(|r| r.phase == last && args.phases.len() > 1)
        .filter(|r| {
            r.outcome != Outcome::Ok
                || r.latency > (first_p99[r.class] * 2).max(Duration::from_millis(1))
        })
        .map(|r| r.offset)
        .max()
        .unwrap_or(Duration::ZERO);
    json!({
        "phases": phases,
        "order": args.phases.iter().map(|p| p.name.clone()).collect::<Vec<_>>(),
        "classes": args.classes.iter().map(|c| c.name.clone()).collect::<Vec<_>>(),
        "recovery_ms": recovery.as_secs_f64() * 1000.0,
    })
}

fn unreachable_hist() -> Histogram<u64> {
    eprintln!("loadgen: could not make a histogram");
    std::process::exit(1)
}
