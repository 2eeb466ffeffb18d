//! `gateway check` validates without serving; `gateway run` refuses a bad config with the same
//! messages.

mod harness;

use harness::*;

fn write(dir: &tempfile::TempDir, text: &str) -> String {
    let p = dir.path().join("gw.toml");
    std::fs::write(&p, text).expect("write");
    p.to_string_lossy().into_owned()
}

#[test]
fn check_accepts_the_demo_config() {
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/demo.toml");
    let (code, out, err) = run_gateway_cli(&["check", "--config", demo]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(": ok (1 listeners, 3 clusters, 5 routes, 6 filters)"),
        "{out}"
    );
}

#[test]
fn check_accepts_the_consul_config_without_reaching_consul() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/consul.toml");
    let (code, out, err) = run_gateway_cli(&["check", "--config", config]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(
            ": ok (1 listeners, 2 clusters, 2 routes, 1 filters; 2 from Consul at 127.0.0.1:8500)"
        ),
        "{out}"
    );
}

#[test]
fn check_rejects_with_file_line_and_fix() {
    let dir = tempfile::tempdir().expect("dir");
    let path = write(
        &dir,
        "[[listeners]]\naddress = \"0.0.0.0:80\"\n\n[clusters.api]\nendpoints = [\"127.0.0.1:1\"]\n\n\
         [[routes]]\nname = \"r\"\ncluster = \"apii\"\n\n[[routes]]\nname = \"r\"\ncluster = \"api\"\npath_prefix = \"/x\"\n",
    );
    let (code, out, err) = run_gateway_cli(&["check", "--config", &path]);
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert!(
        err.contains(&format!(
            "{path}:9:11: error: route `r` names unknown cluster `apii`"
        )),
        "{err}"
    );
    assert!(
        err.contains("fix: declare [clusters.apii] or use a declared cluster (api)"),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{path}:12:8: error: route name `r` is already used by the route at line 7"
        )),
        "{err}"
    );

    let path = write(&dir, "[[listeners]]\naddress = \"0.0.0.0:80\"\nh2 = true\n");
    let (code, _, err) = run_gateway_cli(&["check", "--config", &path]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("{path}:3:1: error: unknown field `h2`")),
        "{err}"
    );

    let (code, _, err) = run_gateway_cli(&["check", "--config", "/nonexistent/gw.toml"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot read the config file"), "{err}");
}

#[test]
fn run_refuses_a_bad_config_and_a_busy_port() {
    let dir = tempfile::tempdir().expect("dir");
    let path = write(&dir, "[[listeners]]\naddress = \"not-an-address\"\n");
    let (code, _, err) = run_gateway_cli(&["run", "--config", &path]);
    assert_eq!(code, 1);
    assert!(
        err.contains("listener address `not-an-address` is not an IP:PORT address"),
        "{err}"
    );

    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = busy.local_addr().expect("addr").port();
    let admin = free_port();
    let path = write(
        &dir,
        &format!("[admin]\naddress = \"127.0.0.1:{admin}\"\n[[listeners]]\naddress = \"127.0.0.1:{port}\"\n"),
    );
    let (code, _, err) = run_gateway_cli(&["run", "--config", &path]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{err}"
    );
}

#[test]
fn the_published_development_keys_need_the_dev_flag() {
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/demo.toml");
    let out = std::process::Command::new(gateway_bin())
        .env_remove("GATEWAY_DEV")
        .args(["run", "--config", demo])
        .output()
        .expect("run gateway");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("key dev-rs256 is a development key published in config/dev-keys")
            && err.contains("--dev"),
        "{err}"
    );
    let (code, _, err) = run_gateway_cli(&["check", "--dev", "--config", demo]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("dev mode"), "{err}");
}
