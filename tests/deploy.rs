//! The deploy files, checked as their users run them: the Kubernetes
//! manifests against the API schemas (PyPI's kubernetes-validate, offline),
//! the systemd unit by `systemd-analyze verify`, every stop timeout against
//! the drain it must outlast, and the shipped node configs run for real
//! against a NATS server that asks for a token, closed to a caller without
//! the admin token or a stream key. (`tests/compose.rs` runs the Compose
//! cluster; `tests/dashboard.rs` the Grafana dashboard and alert rules.)

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

mod common;
use common::{http, publish, temp_file, wait_live, NatsServer, Node};

/// The Kubernetes versions the README names: the oldest it supports and
/// the newest kubernetes-validate knows.
const KUBERNETES: [&str; 2] = ["1.33", "1.37"];

/// What the node's stop takes beyond `drain_delay_ms`: at most 7 s to
/// drain and 2 s to leave the registry (src/main.rs).
const STOP_AFTER_DELAY: Duration = Duration::from_secs(9);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The value of `key = N` (a TOML integer) in `text`'s first such line.
fn toml_int(text: &str, key: &str) -> u64 {
    text.lines()
        .map(str::trim)
        .find_map(|l| {
            l.strip_prefix(key)?
                .trim()
                .strip_prefix('=')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no `{key} = N`"))
}

/// The first `KEY<sep>VALUE` line's value, trimmed of quotes and a unit.
fn value_after(text: &str, key: &str) -> String {
    text.lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key}"))
        .trim()
        .trim_matches('"')
        .to_owned()
}

fn seconds(v: &str) -> Duration {
    let n: u64 = v
        .trim_end_matches('s')
        .parse()
        .unwrap_or_else(|_| panic!("{v}"));
    Duration::from_secs(n)
}

/// The node config the Kubernetes ConfigMap carries.
fn k8s_node_config() -> String {
    let yaml = read("deploy/k8s/tributary.yaml");
    let start = yaml
        .find("  tributary.toml: |\n")
        .expect("the ConfigMap's tributary.toml");
    yaml[start..]
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("    ") || l.is_empty())
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn kubernetes_manifests_pass_the_api_schemas() {
    let validate = std::env::var("TRIBUTARY_KUBERNETES_VALIDATE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo().join("target/k8s-venv/bin/kubernetes-validate"));
    assert!(
        validate.exists(),
        "{} missing: scripts/test installs kubernetes-validate",
        validate.display()
    );
    let kustomization = read("deploy/k8s/kustomization.yaml");
    let resources: Vec<PathBuf> = kustomization
        .lines()
        .skip_while(|l| !l.starts_with("resources:"))
        .skip(1)
        .map_while(|l| l.trim().strip_prefix("- "))
        .map(|f| repo().join("deploy/k8s").join(f))
        .collect();
    assert_eq!(resources.len(), 3, "{kustomization}");
    for version in KUBERNETES {
        let out = Command::new(&validate)
            .args(["--strict", "--quiet", "-k", version])
            .args(&resources)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "Kubernetes {version}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The Secret is made from what deploy/make-secrets writes.
    let secrets = temp_file("k8s-secrets");
    let status = Command::new(repo().join("deploy/make-secrets"))
        .arg(&secrets)
        .output()
        .unwrap();
    assert!(status.status.success());
    for line in kustomization.lines().filter(|l| l.contains("=secrets/")) {
        let file = line.rsplit("secrets/").next().unwrap().trim();
        assert!(secrets.join(file).exists(), "make-secrets makes no {file}");
    }
    // The image the StatefulSet runs is one deploy/image/build tags.
    let version = value_after(&read("Cargo.toml"), "version =");
    let manifest = read("deploy/k8s/tributary.yaml");
    assert_eq!(
        value_after(&manifest, "image:"),
        format!("tributary:{version}")
    );
    assert!(read("deploy/image/build").contains("-t \"tributary:$version\""));
    // No capability is asked for that a non-root pod could not use.
    assert!(!manifest
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .any(|l| l.contains("NET_BIND_SERVICE")));
}

#[test]
fn every_stop_timeout_outlasts_the_drain() {
    let example = read("deploy/config/node.example.toml");
    let delay = Duration::from_millis(toml_int(&example, "drain_delay_ms"));
    let needed = delay + STOP_AFTER_DELAY;

    let unit = read("deploy/systemd/tributary.service");
    let systemd = seconds(&value_after(&unit, "TimeoutStopSec="));
    assert!(systemd > needed, "systemd {systemd:?} <= {needed:?}");

    let compose = read("deploy/compose/compose.yaml");
    for grace in compose
        .lines()
        .filter_map(|l| l.trim().strip_prefix("stop_grace_period:"))
    {
        let grace = seconds(grace.trim());
        assert!(grace > needed, "compose {grace:?} <= {needed:?}");
    }

    let k8s = read("deploy/k8s/tributary.yaml");
    let k8s_delay = Duration::from_millis(toml_int(&k8s_node_config(), "drain_delay_ms"));
    let pre_stop = k8s
        .split("preStop:")
        .nth(1)
        .and_then(|s| s.split("\"sleep\", \"").nth(1))
        .and_then(|s| s.split('"').next())
        .expect("preStop sleep");
    let pre_stop = Duration::from_secs(pre_stop.parse().unwrap());
    let grace = Duration::from_secs(
        value_after(&k8s, "terminationGracePeriodSeconds:")
            .parse()
            .unwrap(),
    );
    let k8s_needed = pre_stop + k8s_delay + STOP_AFTER_DELAY;
    assert!(grace > k8s_needed, "Kubernetes {grace:?} <= {k8s_needed:?}");
}

#[test]
fn the_systemd_unit_verifies() {
    // systemd-analyze reports an ExecStart binary that does not exist: the
    // unit as shipped, pointed at the binary under test.
    let unit = read("deploy/systemd/tributary.service").replace(
        "ExecStart=/usr/local/bin/tributary",
        &format!("ExecStart={}", env!("CARGO_BIN_EXE_tributary")),
    );
    assert!(unit.contains(env!("CARGO_BIN_EXE_tributary")));
    let path = temp_file("tributary.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (scripts/test installs systemd)");
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}

/// Runs `config` (a shipped node config, its secret paths moved to a
/// folder deploy/make-secrets filled) on a NATS server that asks for the
/// token, and checks that it is closed to whoever lacks a secret.
fn closed_as_shipped(name: &str, config: &str) {
    let secrets = temp_file(&format!("{name}-secrets"));
    let out = Command::new(repo().join("deploy/make-secrets"))
        .arg(&secrets)
        .output()
        .unwrap();
    assert!(out.status.success());
    let token = std::fs::read_to_string(secrets.join("nats-token")).unwrap();
    let admin = std::fs::read_to_string(secrets.join("admin-token")).unwrap();
    let key = std::fs::read_to_string(secrets.join("stream-keys")).unwrap();
    let nats = NatsServer::start_with(name, &["--auth", &token]);
    // One local NATS server: one replica of the registry (the shipped
    // files ask for three, on their three servers).
    let config = config
        .replace(
            "/etc/tributary/secrets/",
            &format!("{}/", secrets.display()),
        )
        .replace("kv_replicas = 3", "kv_replicas = 1");
    assert!(
        !config
            .lines()
            .any(|l| !l.trim_start().starts_with('#') && l.contains("/etc/tributary")),
        "{config}"
    );
    let path = temp_file(&format!("{name}.toml"));
    std::fs::write(&path, config).unwrap();
    let node = Node::start_with(
        1,
        &["--config", path.to_str().unwrap(), "--nats", &nats.url()],
    );
    // Ready: it reached NATS with the token.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !http(node.http, "GET", "/readyz", None).0.contains(" 200") {
        assert!(
            std::time::Instant::now() < deadline,
            "not ready: {}",
            node.log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, _) = http(node.http, "GET", "/api/streams", None);
    assert!(status.contains(" 401"), "no token: {status}");
    let (status, _) = http(node.http, "GET", "/api/streams", Some("wrong"));
    assert!(status.contains(" 401"), "a wrong token: {status}");
    let (status, _) = http(node.http, "GET", "/api/streams", Some(admin.trim()));
    assert!(status.contains(" 200"), "the token: {status}");
    let refused = publish(&node.url("guessed-key"), 2).wait(Duration::from_secs(20));
    assert!(refused.is_err(), "a publish without a key was let in");
    let url = format!("rtmp://{}/{}", node.addr, key.trim());
    let _encoder = publish(&url, 20);
    wait_live(&url);
}

#[test]
fn the_example_config_is_closed_and_runs_with_its_secrets() {
    closed_as_shipped("example", &read("deploy/config/node.example.toml"));
}

#[test]
fn the_kubernetes_config_is_closed_and_runs_with_its_secrets() {
    closed_as_shipped("k8s", &k8s_node_config());
}
