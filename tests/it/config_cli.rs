//! The configuration does what the docs say: the README's `check-config`
//! command works as pasted, every section is overridable by env, unknown
//! `CHARTCACHE_*` variables are refused by name, the built-in rules apply
//! without a file, the deployed config has every key of the documented one,
//! and text logs carry no colour codes when stderr is not a terminal.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use figment::Figment;
use figment::providers::{Format, Toml};
use figment::value::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The binary with no inherited `CHARTCACHE_*` variables, run from the repository root.
fn chartcache() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_chartcache"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("CHARTCACHE_") {
            c.env_remove(k);
        }
    }
    c.current_dir(root());
    c
}

fn check_config(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut c = chartcache();
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn readme_check_config_command_works_as_pasted() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let lines: Vec<&str> = readme
        .lines()
        .filter(|l| l.trim_start().starts_with("chartcache check-config"))
        .collect();
    assert!(!lines.is_empty(), "README shows no check-config command");
    for line in lines {
        let cmd = line.split(" #").next().unwrap();
        let args: Vec<&str> = cmd.split_whitespace().skip(1).collect();
        let (ok, _, err) = check_config(&args, &[]);
        assert!(ok, "`{cmd}` failed: {err}");
    }
}

#[test]
fn refresh_ahead_is_overridable_by_env() {
    let (ok, out, err) = check_config(
        &["check-config", "--upstream", "http://superset:8088"],
        &[("CHARTCACHE_REFRESH_AHEAD__HOT_HITS", "3")],
    );
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["refresh_ahead"]["hot_hits"], 3, "{out}");
}

#[test]
fn unknown_env_variables_are_refused_by_name() {
    for (k, v) in [
        ("CHARTCACHE_MEMORY_MAX_BYTES", "1073741824"),
        ("CHARTCACHE_REFRESH_AHAED__HOT_HITS", "3"),
        ("CHARTCACHE_MEMORY__MAX_BYTE", "1073741824"),
    ] {
        let (ok, _, err) = check_config(
            &["check-config", "--upstream", "http://superset:8088"],
            &[(k, v)],
        );
        assert!(!ok, "{k} was accepted");
        let name = k.rsplit("__").next().unwrap().to_ascii_lowercase();
        assert!(
            err.contains(k) || err.to_ascii_lowercase().contains(&name),
            "{k}: {err}"
        );
    }
    // What Kubernetes injects for a Service named chartcache is not refused.
    let (ok, _, err) = check_config(
        &["check-config", "--upstream", "http://superset:8088"],
        &[
            ("CHARTCACHE_SERVICE_HOST", "10.0.0.1"),
            ("CHARTCACHE_SERVICE_PORT", "8080"),
            ("CHARTCACHE_SERVICE_PORT_HTTP", "8080"),
            ("CHARTCACHE_PORT", "tcp://10.0.0.1:8080"),
            ("CHARTCACHE_PORT_8080_TCP", "tcp://10.0.0.1:8080"),
            ("CHARTCACHE_PORT_8080_TCP_PROTO", "tcp"),
            ("CHARTCACHE_PORT_8080_TCP_PORT", "8080"),
            ("CHARTCACHE_PORT_8080_TCP_ADDR", "10.0.0.1"),
        ],
    );
    assert!(ok, "{err}");
}

#[test]
fn documented_rules_apply_without_a_config_file() {
    let (ok, out, err) = check_config(&["check-config", "--upstream", "http://superset:8088"], &[]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = v["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["closed-time-ranges", "samples-uncached"], "{out}");
}

/// Every key path of a TOML file (tables recursed; arrays of tables by the union
/// of their elements' keys).
fn key_paths(path: &Path) -> BTreeSet<String> {
    fn walk(prefix: &str, v: &Value, out: &mut BTreeSet<String>) {
        match v {
            Value::Dict(_, d) => {
                for (k, v) in d {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    out.insert(p.clone());
                    walk(&p, v, out);
                }
            }
            Value::Array(_, a) => {
                for v in a {
                    if let Value::Dict(..) = v {
                        walk(&format!("{prefix}[]"), v, out);
                    }
                }
            }
            _ => {}
        }
    }
    let v: Value = Figment::from(Toml::file(path)).extract().unwrap();
    let mut out = BTreeSet::new();
    walk("", &v, &mut out);
    out
}

#[test]
fn deployed_config_has_every_documented_key() {
    let documented = key_paths(&root().join("config/chartcache.toml"));
    let deployed = key_paths(&root().join("deploy/base/chartcache.toml"));
    let missing: Vec<_> = documented.difference(&deployed).collect();
    let extra: Vec<_> = deployed.difference(&documented).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "deploy/base/chartcache.toml drifted from config/chartcache.toml: \
         missing {missing:?}, not documented {extra:?}"
    );
}

#[test]
fn text_logs_have_no_colour_off_a_terminal_and_warn_without_admin_token() {
    let mut child = chartcache()
        .args([
            "--upstream",
            "http://127.0.0.1:9",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .env("CHARTCACHE_LOG__FORMAT", "text")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut lines = Vec::new();
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(l) => {
                let done = l.contains("chartcache listening");
                lines.push(l);
                if done {
                    break;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let all = lines.join("\n");
    assert!(all.contains("chartcache listening"), "{all}");
    assert!(
        !all.contains('\u{1b}'),
        "colour codes in piped logs: {all:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("WARN") && l.contains("admin token") && l.contains("/purge")),
        "{all}"
    );
}

/// A free loopback port (bound and released; good enough for a test that starts at once).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn healthcheck(admin: &str) -> bool {
    chartcache()
        .args([
            "healthcheck",
            "--admin-listen",
            admin,
            "--timeout-ms",
            "1000",
        ])
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[test]
fn healthcheck_exits_0_when_ready_and_1_when_not_listening() {
    let port = free_port();
    let admin = format!("0.0.0.0:{port}");
    assert!(!healthcheck(&admin), "nothing listens yet");
    let mut child = chartcache()
        .args([
            "--upstream",
            "http://127.0.0.1:9",
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--admin-listen", &admin])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut ok = false;
    while Instant::now() < deadline {
        if healthcheck(&admin) {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        ok,
        "healthcheck never succeeded against a running chartcache"
    );
}
