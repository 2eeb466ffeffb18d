//! The dashboard page in a real browser: headless Chromium driven through chromedriver
//! (Debian's `chromium` and `chromium-driver`, installed by scripts/setup) watches a breaker
//! open while its upstream fails, and an operator's button closes it. Screenshots are saved
//! under the test's output directory (`target/tmp/dashboard/`).

mod harness;

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::error::{CmdError, ErrorStatus};
use fantoccini::{Client, ClientBuilder, Locator};
use harness::*;

/// chromedriver in its own process group, so that dropping it (also when a test fails) stops
/// the browsers it started too.
struct ChromeDriver {
    child: Child,
    port: u16,
}

impl ChromeDriver {
    async fn start() -> Self {
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("chromedriver (Debian package chromium-driver; scripts/setup installs it)");
        let driver = Self { child, port };
        let http = reqwest::Client::new();
        let status = format!("{}/status", driver.url());
        eventually("chromedriver's status", Duration::from_secs(20), || async {
            match http.get(&status).send().await {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(format!("status {}", r.status())),
                Err(e) => Err(e.to_string()),
            }
        })
        .await;
        driver
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn browser(&self) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1400,1000"],
            }),
        );
        ClientBuilder::native()
            .capabilities(caps)
            .connect(&self.url())
            .await
            .expect("a Chromium session")
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }
}

fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&dir).expect("artifact dir");
    dir
}

/// Polls the page until what `selector` shows (the attribute `attr`, or its text) passes
/// `ok`; on timeout saves a screenshot as `shot` and fails. Returns what it showed.
async fn wait_shown(
    c: &Client,
    selector: &str,
    attr: Option<&str>,
    ok: impl Fn(&str) -> bool,
    shot: &str,
) -> String {
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let shown = match c.find(Locator::Css(selector)).await {
            Ok(e) => match attr {
                Some(a) => e.attr(a).await.ok().flatten().unwrap_or_default(),
                None => e.text().await.unwrap_or_default(),
            },
            Err(_) => String::new(),
        };
        if ok(&shown) {
            return shown;
        }
        if Instant::now() >= end {
            let png = c.screenshot().await.unwrap_or_default();
            let path = artifacts().join(format!("timeout-{shot}.png"));
            let _ = std::fs::write(&path, png);
            panic!(
                "the dashboard never showed what was awaited at {selector} (last: {shown:?}; screenshot {})",
                path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Clicks the element at `selector`. The dashboard re-renders its cards on every stream event,
/// so an element found a moment ago can be gone by the click (a stale element reference): it is
/// then found again, within a deadline.
async fn click(c: &Client, selector: &str) {
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let result = match c.find(Locator::Css(selector)).await {
            Ok(e) => e.click().await,
            Err(e) => Err(e),
        };
        match result {
            Ok(_) => return,
            Err(CmdError::Standard(ref w))
                if w.error == ErrorStatus::StaleElementReference && Instant::now() < end => {}
            Err(e) => panic!("click {selector}: {e}"),
        }
    }
}

/// Polls the page until the breaker card of `cluster` shows `state`.
async fn wait_for_state(c: &Client, cluster: &str, state: &str) {
    let selector = format!("#breaker-{cluster} .state");
    let shot = format!("{cluster}-{state}");
    wait_shown(c, &selector, Some("data-state"), |s| s == state, &shot).await;
}

/// Polls the page until the element at `selector` shows text containing `want`.
async fn wait_for_text(c: &Client, selector: &str, want: &str) -> String {
    wait_shown(c, selector, None, |s| s.contains(want), "text").await
}

#[tokio::test]
async fn the_dashboard_shows_a_breaker_open_while_its_upstream_fails() {
    let up = echo("titles").await;
    let body = format!(
        "{}\
         [clusters.titles.circuit_breaker]\nvolume_threshold = 4\nerror_percent = 50\nsleep_window_ms = 60000\n\
         [clusters.titles.retry]\nretries = 0\n\
         [clusters.titles.outlier_detection]\nenabled = false\n\n\
         [[routes]]\nname = \"titles\"\ncluster = \"titles\"\npath_prefix = \"/titles\"\n",
        cluster("titles", &[&up], ""),
    );
    let gw = Gateway::start(&body).await;
    let http = client();
    let driver = ChromeDriver::start().await;
    let c = driver.browser().await;

    c.goto(&gw.admin_url("/dashboard")).await.expect("load");
    for _ in 0..3 {
        let r = http.get(gw.url("/titles/1")).send().await.expect("req");
        assert_eq!(r.status(), 200);
    }
    wait_for_state(&c, "titles", "closed").await;
    let route_row = c
        .find(Locator::Css("#routes tr[data-route=\"titles\"]"))
        .await
        .expect("the route's row");
    assert!(route_row.text().await.expect("text").contains("titles"));

    // The upstream fails; the breaker opens, and the page shows it from the stream.
    up.set_fault(Some(503), Duration::ZERO);
    for _ in 0..5 {
        let _ = http.get(gw.url("/titles/1")).send().await.expect("req");
    }
    wait_for_state(&c, "titles", "open").await;
    // The cards are re-rendered from the stream, so each read finds its element afresh.
    wait_shown(&c, "#breaker-titles .state", None, |t| t == "OPEN", "badge").await;
    let rate = wait_shown(
        &c,
        "#breaker-titles .error-rate",
        None,
        |t| !t.is_empty(),
        "rate",
    )
    .await;
    assert_ne!(rate, "0 %", "the error rate is shown");
    let shot = c.screenshot().await.expect("screenshot");
    let path = artifacts().join("breaker-open.png");
    std::fs::write(&path, &shot).expect("save screenshot");
    assert!(shot.starts_with(b"\x89PNG"), "a PNG screenshot");
    eprintln!("screenshot: {}", path.display());

    // The operator's button: force it closed from the page.
    click(&c, "#breaker-titles button[data-action=\"force_closed\"]").await;
    wait_for_state(&c, "titles", "forced_closed").await;
    let (_, j) = get_json(&http, &gw.admin_url("/breakers/titles")).await;
    assert_eq!(j["breaker"]["state"], "forced_closed", "{j}");
    c.close().await.expect("close the browser");
}

#[tokio::test]
async fn the_dashboard_shows_a_clusters_adaptive_limit_and_what_it_sheds() {
    let up = echo("origin").await;
    let body = format!(
        "[overload]\nmax_in_flight = 100\n\n{}\
         [clusters.origin.adaptive_concurrency]\ninitial_limit = 1\nmin_limit = 1\nmax_limit = 1\nqueue_timeout_ms = 0\n\n\
         [[routes]]\nname = \"play\"\ncluster = \"origin\"\npath_prefix = \"/play\"\npriority = \"critical\"\n\
         [[routes]]\nname = \"events\"\ncluster = \"origin\"\npath_prefix = \"/events\"\npriority = \"non_critical\"\n",
        cluster("origin", &[&up], ""),
    );
    let gw = Gateway::start(&body).await;
    let http = client();
    let driver = ChromeDriver::start().await;
    let c = driver.browser().await;
    c.goto(&gw.admin_url("/dashboard")).await.expect("load");

    // A playback request holds the only slot; an events request meanwhile is shed.
    let held = {
        let http = http.clone();
        let url = gw.url("/play?delay_ms=1500");
        tokio::spawn(async move { http.get(url).send().await.map(|r| r.status().as_u16()) })
    };
    eventually("the slot held", Duration::from_secs(10), || async {
        let (_, o) = get_json(&http, &gw.admin_url("/overload")).await;
        if o["clusters"]["origin"]["in_flight"] == 1 {
            Ok(())
        } else {
            Err(o.to_string())
        }
    })
    .await;
    let r = http.get(gw.url("/events")).send().await.expect("req");
    assert_eq!(r.status(), 503);
    assert_eq!(held.await.expect("join").expect("held"), 200);

    let shed = wait_for_text(&c, "#breaker-origin .shed", "non-critical 1").await;
    assert!(shed.contains("critical 0"), "{shed}");
    let limit = wait_for_text(&c, "#breaker-origin .limit", "/ 1").await;
    assert!(limit.starts_with('0') || limit.starts_with('1'), "{limit}");
    let row = wait_for_text(
        &c,
        "#routes tr[data-route=\"events\"] .priority",
        "non-critical",
    )
    .await;
    assert_eq!(row, "non-critical");
    let inbound = wait_for_text(&c, "#inbound", "/ 100").await;
    assert!(inbound.contains("shed non-critical 0"), "{inbound}");
    let shot = c.screenshot().await.expect("screenshot");
    std::fs::write(artifacts().join("adaptive-limit.png"), &shot).expect("save screenshot");
    c.close().await.expect("close the browser");
}
