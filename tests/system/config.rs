//! Malformed configuration files: each is refused at start with the
//! documented message and exit code 78, never a panic.

use std::process::Command;

use containeros_tests::bin;

fn agent_on(config: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, config).expect("write");
    let out = Command::new(bin("containeros-agent"))
        .arg("--config")
        .arg(&path)
        .output()
        .expect("run agent");
    let stderr = String::from_utf8_lossy(&out.stderr).replace(&path.display().to_string(), "FILE");
    (out.status.code(), stderr)
}

#[test]
fn malformed_configs_exit_78_with_file_line_and_key() {
    let cases: &[(&str, &str)] = &[
        (
            "[engine]\nsokcet = \"/run/docker.sock\"\n",
            "FILE:2:1: engine.sokcet: unknown key `sokcet`; remove it or check its spelling",
        ),
        (
            "[engine]\ncheck_interval = 10\n",
            "FILE:2:18: engine.check_interval: invalid type: integer `10`, expected a duration string",
        ),
        (
            "[engine]\nmax_restarts = 0\n",
            "FILE:2:16: engine.max_restarts: invalid value: integer `0`, expected a nonzero u32",
        ),
        (
            "[engine]\nrestart_backoff = \"10m\"\nrestart_backoff_max = \"1m\"\n",
            "FILE:3:1: engine.restart_backoff_max: 1m is less than engine.restart_backoff (10m)",
        ),
        (
            "[engine\n",
            "FILE:1:8: unclosed table, expected `]`; fix the file's TOML syntax",
        ),
        (
            "\u{feff}[agent]\nstate_dir = 5\n",
            "FILE:2:13: agent.state_dir: invalid type: integer `5`",
        ),
    ];
    for (config, wanted) in cases {
        let (code, stderr) = agent_on(config);
        assert_eq!(code, Some(78), "{config:?}: {stderr}");
        assert!(
            stderr.starts_with(&format!("containeros-agent: invalid configuration: {wanted}")),
            "{config:?}:\n{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn missing_or_unreadable_config_is_refused_clearly() {
    let out = Command::new(bin("containeros-agent"))
        .args(["--config", "/nonexistent/agent.toml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("configuration file /nonexistent/agent.toml not found"),
        "{stderr}"
    );

    let out = Command::new(bin("containeros-agent"))
        .arg("--frobnicate")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "usage error");
}

#[test]
fn shipped_sample_passes_check_config() {
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/../agent/dist/agent.toml");
    let out = Command::new(bin("containeros-agent"))
        .args(["--check-config", "--config", sample])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("configuration OK: "));

    // The environment variable names the file when --config is absent.
    let out = Command::new(bin("containeros-agent"))
        .arg("--check-config")
        .env("CONTAINEROS_CONFIG", "/nonexistent/env.toml")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/env.toml"));
}
