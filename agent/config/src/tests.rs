use super::*;

fn src(path: &str, text: &str) -> Source {
    Source {
        path: PathBuf::from(path),
        text: text.to_owned(),
    }
}

fn err(base: &str, overlay: Option<&str>) -> String {
    load_sources(
        src("/etc/agent.toml", base),
        overlay.map(|t| src("/data/agent.toml", t)),
    )
    .expect_err("should be refused")
    .to_string()
}

#[test]
fn shipped_sample_is_valid_and_equals_the_defaults() {
    let text = include_str!("../../dist/agent.toml");
    let loaded = load_sources(src("agent.toml", text), None).expect("sample parses");
    assert_eq!(loaded.config, Config::default());
}

#[test]
fn empty_file_gives_defaults() {
    let loaded = load_sources(src("a.toml", ""), None).expect("empty is valid");
    assert_eq!(loaded.config, Config::default());
}

#[test]
fn override_replaces_key_by_key() {
    let base = "[engine]\nsocket = \"/run/a.sock\"\ncheck_interval = \"20s\"\n";
    let overlay = "[engine]\ncheck_interval = \"30s\"\n[dbus]\nbus = \"unix:path=/tmp/bus\"\n";
    let loaded = load_sources(src("/b", base), Some(src("/o", overlay))).expect("valid");
    let c = &loaded.config;
    assert_eq!(c.engine.socket.as_path(), Path::new("/run/a.sock"));
    assert_eq!(c.engine.check_interval, Duration::from_secs(30));
    assert_eq!(c.dbus.bus, Bus::Address("unix:path=/tmp/bus".into()));
    assert_eq!(
        c.engine.unit.as_ref().map(UnitName::as_str),
        Some("docker.service")
    );
}

#[test]
fn empty_unit_means_no_unit() {
    let loaded = load_sources(src("/b", "[engine]\nunit = \"\"\nkind = \"native\"\n"), None).expect("valid");
    assert_eq!(loaded.config.engine.unit, None);
    assert_eq!(loaded.config.engine.kind, EngineKind::Native);
}

#[test]
fn native_logs_are_auto_journald_or_file() {
    let loaded = load_sources(src("/b", "[engine]\nnative_logs = \"journald\"\n"), None).expect("valid");
    assert_eq!(loaded.config.engine.native_logs, NativeLogs::Journald);
    let err =
        load_sources(src("/b", "[engine]\nnative_logs = \"syslog\"\n"), None).expect_err("unknown value");
    let message = err.to_string();
    for part in ["engine.native_logs", "auto", "journald", "file"] {
        assert!(message.contains(part), "{part} in {message}");
    }
}

/// Each malformed file: (text, substrings the message must contain).
#[test]
fn malformed_files_name_file_line_key_and_remedy() {
    let cases: &[(&str, &[&str])] = &[
        (
            "[engine]\nsocket = \"/run/docker.sock\"\nsokcet = \"/x\"\n",
            &[
                "/etc/agent.toml:3:1",
                "engine.sokcet",
                "unknown key `sokcet`",
                "check its spelling",
                "`socket`",
            ],
        ),
        (
            "[enigne]\n",
            &["/etc/agent.toml:1:2", "unknown key `enigne`", "`engine`"],
        ),
        (
            "[engine]\nfailures_before_restart = \"three\"\n",
            &[
                "/etc/agent.toml:2:27",
                "engine.failures_before_restart",
                "invalid type",
                "remove the key",
            ],
        ),
        (
            "[engine]\nfailures_before_restart = 0\n",
            &[":2:", "engine.failures_before_restart", "nonzero"],
        ),
        (
            "[engine]\ncheck_interval = \"10x\"\n",
            &[":2:", "engine.check_interval", "ms, s, m, h or d"],
        ),
        (
            "[engine]\ncheck_interval = \"10\"\n",
            &["engine.check_interval", "no unit"],
        ),
        (
            "[engine]\nsocket = \"run/docker.sock\"\n",
            &[":2:", "engine.socket", "absolute path"],
        ),
        (
            "[engine]\nkind = \"podman\"\n",
            &[":2:", "engine.kind", "docker", "native"],
        ),
        (
            "[engine]\nunit = \"docker\"\n",
            &[":2:", "engine.unit", "systemd unit name"],
        ),
        (
            "[dbus]\nbus = \"session\"\n",
            &[":2:", "dbus.bus", "D-Bus address"],
        ),
        (
            "[agent]\nlog_level = \"loud\"\n",
            &[":2:", "agent.log_level", "log filter"],
        ),
        ("[engine\nsocket = 1\n", &["/etc/agent.toml:1:", "TOML syntax"]),
        (
            "engine.socket = \"/a\"\nengine.socket = \"/b\"\n",
            &["/etc/agent.toml:2:", "TOML syntax"],
        ),
        (
            "[engine]\ncheck_interval = \"500ms\"\n",
            &[
                "/etc/agent.toml:2:1",
                "engine.check_interval",
                "too short",
                "at least",
            ],
        ),
        (
            "[engine]\ncheck_interval = \"5s\"\ncheck_timeout = \"6s\"\n",
            &[
                "/etc/agent.toml:3:1",
                "engine.check_timeout",
                "at most engine.check_interval",
            ],
        ),
        (
            "[engine]\nrestart_backoff = \"10m\"\n",
            &[
                "/etc/agent.toml",
                "engine.restart_backoff_max",
                "less than engine.restart_backoff",
            ],
        ),
        ("agent = 3\n", &[":1:", "agent", "invalid type"]),
    ];
    for (text, wanted) in cases {
        let message = err(text, None);
        for w in *wanted {
            assert!(message.contains(w), "for {text:?}: {message:?} lacks {w:?}");
        }
    }
}

#[test]
fn errors_in_the_override_name_the_override() {
    let message = err("", Some("\n[engine]\ncheck_timeout = 5\n"));
    assert!(message.starts_with("/data/agent.toml:3:"), "{message}");
    assert!(message.contains("engine.check_timeout"), "{message}");

    // A rule across keys is reported where the offending key was set last.
    let message = err(
        "[engine]\nrestart_backoff_max = \"1m\"\n",
        Some("[engine]\nrestart_backoff_max = \"1s\"\n"),
    );
    assert!(
        message.starts_with("/data/agent.toml:2:1: engine.restart_backoff_max"),
        "{message}"
    );
}

#[test]
fn override_cannot_move_the_state_dir() {
    let message = err("", Some("[agent]\nstate_dir = \"/somewhere\"\n"));
    assert!(
        message.starts_with("/data/agent.toml:2:1: agent.state_dir"),
        "{message}"
    );
    assert!(message.contains("base configuration file"), "{message}");
}

#[test]
fn load_reads_the_override_from_the_state_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("mkdir");
    let base = dir.path().join("agent.toml");
    std::fs::write(&base, format!("[agent]\nstate_dir = \"{}\"\n", state.display())).expect("write");
    std::fs::write(state.join(OVERRIDE_FILE), "[engine]\nmax_restarts = 9\n").expect("write");
    let loaded = load(&base).expect("loads");
    assert_eq!(loaded.config.engine.max_restarts.get(), 9);
    assert_eq!(loaded.sources.len(), 2);

    let missing = load(&dir.path().join("nope.toml"))
        .expect_err("missing")
        .to_string();
    assert!(missing.contains("nope.toml not found"), "{missing}");
}

#[test]
fn provisioned_layer_sits_between_base_and_override() {
    let base = src(
        "/etc/agent.toml",
        "[channel]\nurl = \"https://base\"\n[apps]\nmin_free_mib = 1\n",
    );
    let provisioned = src(
        "/data/containeros/provision/agent.toml",
        "[channel]\nurl = \"https://provisioned\"\n[apps]\ndevelopment = true\n",
    );
    let overlay = src("/data/containeros/agent.toml", "[apps]\ndevelopment = false\n");
    let loaded = load_layers(base, vec![provisioned, overlay]).expect("valid");
    assert_eq!(loaded.config.channel.url, "https://provisioned");
    assert!(!loaded.config.apps.development);
    assert_eq!(loaded.config.apps.min_free_mib, 1);
    assert_eq!(
        loaded.locate("channel.url").map(|l| l.path),
        Some(PathBuf::from("/data/containeros/provision/agent.toml"))
    );
}
