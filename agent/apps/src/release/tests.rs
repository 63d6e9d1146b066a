use std::collections::BTreeSet;

use super::*;

const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

/// A release with one service whose fields are `body` (indented by the
/// caller as service fields, 4 spaces).
fn one_service(body: &str) -> String {
    format!(
        "name: app\nx-containeros:\n  version: \"1.0\"\nservices:\n  web:\n    image: reg.local/web@{D1}\n{body}volumes:\n  data:\nnetworks:\n  front:\n"
    )
}

fn ok(text: &str) -> Release {
    parse(text, "release.yml", Mode::Committed).unwrap_or_else(|e| panic!("refused: {e}\n{text}"))
}

fn web(text: &str) -> Service {
    let mut r = ok(text);
    r.services
        .remove("web")
        .unwrap_or_else(|| panic!("no web service"))
}

#[test]
fn example_file_parses() {
    let text = include_str!("../../examples/release.yml");
    let r = ok(text);
    assert_eq!(r.name, "greenhouse");
    assert_eq!(r.version.as_str(), "2.3.1");
    assert_eq!(r.os_version.as_ref().map(Version::as_str), Some("1.4.0"));
    assert_eq!(r.update_lock_timeout, Some(Duration::from_secs(1800)));
    assert_eq!(r.start_order(), ["collector", "db", "migrate", "api", "web"]);
    let names: BTreeSet<&str> = r.networks.values().map(|n| n.engine_name.as_str()).collect();
    assert_eq!(
        names,
        BTreeSet::from(["greenhouse_backend", "greenhouse_frontend"])
    );
    assert_eq!(r.volumes["db-data"].engine_name, "greenhouse_db-data");
    let db = &r.services["db"];
    assert_eq!(
        db.restart,
        Restart::UnlessStopped,
        "merged from the x-defaults anchor"
    );
    assert_eq!(db.stop_grace_period, Duration::from_secs(15));
    assert_eq!(
        db.healthcheck.as_ref().map(|h| &h.test),
        Some(&HealthTest::CmdShell("pg_isready -U ${POSTGRES_USER}".to_owned())),
        "`$$` is a literal `$`"
    );
    assert_eq!(db.update_strategy, UpdateStrategy::KillThenDownload);
    let api = &r.services["api"];
    assert_eq!(api.command.as_deref().map(<[String]>::len), Some(4));
    assert_eq!(api.cpus, Some(NanoCpus(500_000_000)));
    assert_eq!(
        api.networks["frontend"].aliases,
        BTreeSet::from(["api.internal".to_owned()])
    );
    assert_eq!(r.services["collector"].network_mode, Some(NetworkMode::Host));
    assert!(r.services["collector"].networks.is_empty());
    assert_eq!(r.services["collector"].restart, Restart::OnFailure(Some(5)));
}

#[test]
fn short_and_long_forms_normalize_alike() {
    // Each pair: two spellings of one configuration.
    let pairs: &[(&str, &str)] = &[
        (
            "    ports: [\"8080:80\"]\n",
            "    ports:\n      - target: 80\n        published: \"8080\"\n        protocol: tcp\n",
        ),
        (
            "    volumes: [\"data:/var/lib:ro\"]\n",
            "    volumes:\n      - type: volume\n        source: data\n        target: /var/lib\n        read_only: true\n",
        ),
        (
            "    environment: [\"A=1\", \"B=x=y\"]\n",
            "    environment:\n      A: 1\n      B: x=y\n",
        ),
        ("    labels: [\"a=b\"]\n", "    labels:\n      a: b\n"),
        ("    networks: [front]\n", "    networks:\n      front:\n"),
        (
            "    command: sh -c 'echo \"hi there\"'\n",
            "    command: [sh, -c, echo \"hi there\"]\n",
        ),
        ("    tmpfs: /run\n", "    tmpfs: [/run]\n"),
        ("    cap_add: [net_admin]\n", "    cap_add: [CAP_NET_ADMIN]\n"),
        ("    stop_grace_period: 90s\n", "    stop_grace_period: 1m30s\n"),
        ("    stop_grace_period: 10s\n", ""),
        ("    restart: \"no\"\n", ""),
        ("    stop_signal: term\n", "    stop_signal: SIGTERM\n"),
        (
            "    healthcheck:\n      test: curl -f localhost\n",
            "    healthcheck:\n      test: [CMD-SHELL, curl -f localhost]\n",
        ),
        (
            "    healthcheck:\n      disable: true\n",
            "    healthcheck:\n      test: [NONE]\n",
        ),
        ("    mem_limit: 1g\n", "    mem_limit: 1073741824\n"),
    ];
    for (a, b) in pairs {
        let (sa, sb) = (web(&one_service(a)), web(&one_service(b)));
        assert_eq!(sa, sb, "\n{a}\nvs\n{b}");
        assert_eq!(sa.config_hash(), sb.config_hash());
    }
}

type Check = Box<dyn Fn(&Service) -> bool>;

#[test]
fn parses_field_values() {
    let port = |host_ip: Option<&str>, published: Option<u16>, target, protocol| Port {
        host_ip: host_ip.map(str::to_owned),
        published,
        target,
        protocol,
    };
    let table: Vec<(&str, Check)> = vec![
        (
            "    ports: [80]\n",
            Box::new(move |s| s.ports == [port(None, None, 80, Protocol::Tcp)]),
        ),
        (
            "    ports: [\"127.0.0.1:8080:80/udp\"]\n",
            Box::new(move |s| s.ports == [port(Some("127.0.0.1"), Some(8080), 80, Protocol::Udp)]),
        ),
        (
            "    ports: [\"127.0.0.1::80\"]\n",
            Box::new(move |s| s.ports == [port(Some("127.0.0.1"), None, 80, Protocol::Tcp)]),
        ),
        (
            "    ports: [\"[::1]:53:53/udp\"]\n",
            Box::new(move |s| s.ports == [port(Some("::1"), Some(53), 53, Protocol::Udp)]),
        ),
        (
            "    volumes: [\"/data/x:/x\"]\n",
            Box::new(|s| {
                s.volumes
                    == [Mount {
                        source: MountSource::Bind("/data/x".into()),
                        target: "/x".into(),
                        read_only: false,
                    }]
            }),
        ),
        (
            "    restart: on-failure\n",
            Box::new(|s| s.restart == Restart::OnFailure(None)),
        ),
        (
            "    restart: always\n",
            Box::new(|s| s.restart == Restart::Always),
        ),
        (
            "    devices: [/dev/ttyUSB0]\n",
            Box::new(|s| s.devices[0].container == "/dev/ttyUSB0" && s.devices[0].permissions == "rwm"),
        ),
        (
            "    entrypoint: /bin/run --now\n",
            Box::new(|s| s.entrypoint == Some(vec!["/bin/run".into(), "--now".into()])),
        ),
        (
            "    user: 1000\n",
            Box::new(|s| s.user.as_deref() == Some("1000")),
        ),
        (
            "    cpus: \"1.5\"\n",
            Box::new(|s| s.cpus == Some(NanoCpus(1_500_000_000))),
        ),
        (
            "    network_mode: none\n",
            Box::new(|s| s.networks.is_empty() && s.network_mode == Some(NetworkMode::None)),
        ),
        (
            "    environment:\n      EMPTY: \"\"\n",
            Box::new(|s| s.environment["EMPTY"].is_empty()),
        ),
        (
            "    tmpfs: [\"/run:size=1m,mode=0755\"]\n",
            Box::new(|s| s.tmpfs["/run"] == "size=1m,mode=0755"),
        ),
        (
            "    x-note: ignored like Compose does\n",
            Box::new(|s| s.labels.is_empty()),
        ),
    ];
    for (body, check) in table {
        let s = web(&one_service(body));
        assert!(check(&s), "{body} gave {s:#?}");
    }
}

#[test]
fn default_network_is_implicit() {
    let r = ok(&one_service(""));
    assert_eq!(r.services["web"].networks.keys().collect::<Vec<_>>(), ["default"]);
    assert_eq!(r.networks["default"].engine_name, "app_default");
    let r = ok(&one_service("    networks: [front]\n"));
    assert!(!r.networks.contains_key("default"));
}

#[test]
fn the_name_may_live_in_x_containeros() {
    let svc = format!("services:\n  web:\n    image: reg.local/web@{D1}\n");
    for text in [
        format!("x-containeros:\n  name: app\n  version: \"1\"\n{svc}"),
        format!("name: app\nx-containeros:\n  name: app\n  version: \"1\"\n{svc}"),
    ] {
        assert_eq!(ok(&text).name, "app");
    }
}

#[test]
fn development_mode_accepts_tags() {
    let text = "name: app\nx-containeros: {version: \"1\"}\nservices:\n  web:\n    image: web:dev\n";
    let r = parse(text, "dev.yml", Mode::Development).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.services["web"].image.tag.as_deref(), Some("dev"));
    let e = match parse(text, "dev.yml", Mode::Committed) {
        Ok(_) => panic!("a tag-only image was accepted in a committed release"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("dev.yml:5: service `web`: field `image`") && e.contains("not pinned by digest"),
        "{e}"
    );
}

#[test]
fn config_hash_changes_exactly_with_the_container_config() {
    let base = web(&one_service("    depends_on: []\n")).config_hash();
    assert_eq!(base.len(), 64);
    // Fields that do not need a new container.
    for same in [
        "    x-containeros: {update_strategy: hand-over}\n",
        "    restart: \"no\"\n",
        "    stop_grace_period: 10s\n",
    ] {
        assert_eq!(web(&one_service(same)).config_hash(), base, "{same}");
    }
    // Every change of what runs gives a new hash.
    let mut seen = BTreeSet::from([base]);
    for changed in [
        "    environment: [A=1]\n",
        "    environment: [A=2]\n",
        "    ports: [\"80:80\"]\n",
        "    ports: [\"81:80\"]\n",
        "    volumes: [\"data:/d\"]\n",
        "    networks: [front]\n",
        "    labels: {a: b}\n",
        "    command: [run]\n",
        "    entrypoint: [run]\n",
        "    privileged: true\n",
        "    read_only: true\n",
        "    mem_limit: 64m\n",
        "    cpus: 1\n",
        "    user: nobody\n",
        "    restart: always\n",
        "    stop_grace_period: 11s\n",
        "    stop_signal: SIGINT\n",
        "    hostname: h\n",
        "    healthcheck: {test: [CMD, true]}\n",
        "    tmpfs: /run\n",
        "    cap_add: [NET_ADMIN]\n",
        "    devices: [/dev/null]\n",
    ] {
        let hash = web(&one_service(changed)).config_hash();
        assert!(seen.insert(hash), "{changed} did not change the hash");
    }
    let other_image = one_service("").replace(D1, D2);
    assert!(seen.insert(web(&other_image).config_hash()), "image");
}

/// (file, expected fragments of the message).
const MALFORMED: &[(&str, &[&str])] = &[
    // Refused Compose fields, each with service, field and reason.
    (
        "    build: .\n",
        &[
            "release.yml:7: service `web`: field `build` is not supported: releases run prebuilt images; push the image and reference it by digest",
        ],
    ),
    (
        "    env_file: .env\n",
        &["service `web`: field `env_file` is not supported", "environment"],
    ),
    (
        "    deploy: {replicas: 2}\n",
        &["service `web`: field `deploy` is not supported", "swarm"],
    ),
    (
        "    secrets: [a]\n",
        &["service `web`: field `secrets` is not supported"],
    ),
    (
        "    configs: [a]\n",
        &["service `web`: field `configs` is not supported"],
    ),
    (
        "    extends: {service: x}\n",
        &["service `web`: field `extends` is not supported"],
    ),
    (
        "    profiles: [debug]\n",
        &["service `web`: field `profiles` is not supported"],
    ),
    (
        "    container_name: web\n",
        &[
            "service `web`: field `container_name` is not supported",
            "crash-safe",
        ],
    ),
    (
        "    imagee: x\n",
        &["release.yml:7: service `web`: field `imagee` is not supported: unknown field"],
    ),
    (
        "    healthcheck:\n      test: [CMD, x]\n      intervall: 5s\n",
        &["release.yml:9: service `web`: field `healthcheck.intervall` is not supported"],
    ),
    (
        "    healthcheck: {test: [CMD, x], start_interval: 1s}\n",
        &["field `healthcheck.start_interval` is not supported", "1.44"],
    ),
    // Bad values.
    (
        "    environment: [FOO]\n",
        &["service `web`: field `environment.FOO`", "has no value"],
    ),
    (
        "    environment:\n      FOO:\n",
        &["field `environment.FOO`", "has no value"],
    ),
    (
        "    environment: [\"A=$HOME\"]\n",
        &["field `environment` is not supported", "interpolation"],
    ),
    (
        "    command: echo ${X}\n",
        &["field `command` is not supported", "interpolation"],
    ),
    (
        "    ports: [\"8000-8001:80-81\"]\n",
        &["field `ports` is not supported", "ranges"],
    ),
    (
        "    ports: [\"99999:80\"]\n",
        &["field `ports`", "invalid host port `99999`"],
    ),
    (
        "    ports: [\"80/icmp\"]\n",
        &["field `ports`", "unknown protocol"],
    ),
    (
        "    ports: [{published: 80}]\n",
        &["field `ports.target`", "required"],
    ),
    (
        "    volumes: [/data]\n",
        &["field `volumes` is not supported", "anonymous"],
    ),
    (
        "    volumes: [\"./data:/data\"]\n",
        &["field `volumes`", "relative"],
    ),
    (
        "    volumes: [\"data:/data:z\"]\n",
        &["field `volumes` is not supported", "`z`"],
    ),
    (
        "    volumes: [\"data:rel\"]\n",
        &["field `volumes`", "absolute path"],
    ),
    (
        "    volumes: [{type: tmpfs, target: /t, source: x}]\n",
        &["field `volumes.type` is not supported"],
    ),
    (
        "    volumes: [\"other:/data\"]\n",
        &[
            "release.yml:7: service `web`: field `volumes`",
            "volume `other` is not declared",
        ],
    ),
    (
        "    networks: [back]\n",
        &["field `networks`", "network `back` is not declared"],
    ),
    (
        "    networks: {front: {ipv4_address: 10.0.0.2}}\n",
        &["field `networks.front.ipv4_address` is not supported"],
    ),
    (
        "    network_mode: host\n    ports: [\"80:80\"]\n",
        &["field `ports`", "network_mode: host"],
    ),
    (
        "    network_mode: host\n    networks: [front]\n",
        &["field `network_mode`", "together with `networks`"],
    ),
    (
        "    network_mode: \"service:db\"\n",
        &[
            "field `network_mode` is not supported",
            "only `host`, `none` or `bridge`",
        ],
    ),
    (
        "    depends_on: [db]\n",
        &["field `depends_on`", "`db`, which is not a service"],
    ),
    (
        "    depends_on: {x: {condition: service_ready}}\n",
        &["field `depends_on.x.condition`", "unknown condition"],
    ),
    ("    restart: sometimes\n", &["field `restart`", "on-failure:N"]),
    ("    healthcheck: {test: [CMD]}\n", &["field `healthcheck.test`"]),
    (
        "    healthcheck: {test: [CMD, x], interval: 5}\n",
        &["field `healthcheck.interval`", "expected a string"],
    ),
    (
        "    healthcheck: {test: [CMD, x], interval: 5x}\n",
        &["field `healthcheck.interval`", "unknown unit"],
    ),
    ("    mem_limit: 12q\n", &["field `mem_limit`", "unknown unit"]),
    ("    cpus: 0\n", &["field `cpus`", "zero"]),
    ("    stop_grace_period: soon\n", &["field `stop_grace_period`"]),
    (
        "    devices: [\"/dev/x:/dev/x:rwx\"]\n",
        &["field `devices`", "permissions"],
    ),
    ("    privileged: yes\n", &["field `privileged`", "true or false"]),
    (
        "    labels: {org.containeros.service: x}\n",
        &["field `labels`", "reserved"],
    ),
    ("    working_dir: srv\n", &["field `working_dir`", "absolute"]),
    (
        "    x-containeros: {update_strategy: yolo}\n",
        &["field `x-containeros.update_strategy`", "unknown strategy"],
    ),
    (
        "    x-containeros: {strategy: hand-over}\n",
        &["field `x-containeros.strategy` is not supported"],
    ),
];

#[test]
fn malformed_services_are_refused_with_service_field_and_reason() {
    for (body, fragments) in MALFORMED {
        let text = one_service(body);
        let err = match parse(&text, "release.yml", Mode::Committed) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e.to_string(),
        };
        for fragment in *fragments {
            assert!(err.contains(fragment), "{body}: `{err}` lacks `{fragment}`");
        }
    }
}

#[test]
fn malformed_files_are_refused() {
    let svc = format!("services:\n  web:\n    image: reg.local/web@{D1}\n");
    let meta = "x-containeros:\n  version: \"1.0\"\n";
    let table: Vec<(String, &[&str])> = vec![
        (
            "name: [unclosed\n".to_owned(),
            &["release.yml:2: cannot read the release as YAML"],
        ),
        (
            "- a list\n".to_owned(),
            &["release.yml: top level: expected a mapping"],
        ),
        (
            format!("name: app\n{meta}services:\n  web:\n"),
            &["release.yml:5: service `web`: expected a mapping of service fields, found nothing"],
        ),
        (
            format!("name: app\nx-containeros: \"1.0\"\n{svc}"),
            &["`x-containeros`: expected a mapping"],
        ),
        (format!("{meta}{svc}"), &["top level: field `name`", "required"]),
        (
            format!("name: app\nx-containeros:\n  name: other\n  version: \"1\"\n{svc}"),
            &[
                "release.yml:3: `x-containeros`: field `name`",
                "differs from the top-level `name: app`",
            ],
        ),
        (
            format!("x-containeros:\n  name: App\n  version: \"1\"\n{svc}"),
            &["`x-containeros`: field `name`", "not a valid"],
        ),
        (
            format!("name: My_App\n{meta}{svc}"),
            &[
                "release.yml:1: top level: field `name`",
                "not a valid project name",
            ],
        ),
        (format!("name: _app\n{meta}{svc}"), &["not a valid project name"]),
        (
            format!("name: app\n{svc}"),
            &["field `x-containeros`", "metadata is required"],
        ),
        (
            format!("name: app\nx-containeros: {{version: 1.10}}\n{svc}"),
            &["`x-containeros`: field `version`", "quoted"],
        ),
        (
            format!("name: app\nx-containeros: {{version: \"1.x\"}}\n{svc}"),
            &["field `version`", "invalid version"],
        ),
        (
            format!("name: app\nx-containeros: {{version: \"1\", channel: beta}}\n{svc}"),
            &["`x-containeros`: field `channel` is not supported"],
        ),
        (
            format!("name: app\nx-containeros: {{version: \"1\", update_lock_timeout: never}}\n{svc}"),
            &["field `update_lock_timeout`"],
        ),
        (
            format!("name: app\nversion: \"3.8\"\n{meta}{svc}"),
            &[
                "release.yml:2: top level: field `version` is not supported",
                "x-containeros.version",
            ],
        ),
        (
            format!("name: app\n{meta}{svc}secrets: {{}}\n"),
            &["top level: field `secrets` is not supported"],
        ),
        (
            format!("name: app\n{meta}services: {{}}\n"),
            &["field `services`", "at least one service"],
        ),
        (
            format!("name: app\n{meta}{svc}volumes:\n  data:\n    external: true\n"),
            &["release.yml:9: volume `data`: field `external` is not supported"],
        ),
        (
            format!("name: app\n{meta}{svc}networks:\n  n:\n    driver: overlay\n"),
            &["network `n`: field `driver` is not supported", "bridge"],
        ),
        (
            format!("name: app\n{meta}services:\n  web:\n    command: [x]\n"),
            &["service `web`: field `image`", "needs an image"],
        ),
        (
            format!("name: app\n{meta}services:\n  web:\n    image: Web\n"),
            &["service `web`: field `image`", "invalid repository"],
        ),
        (
            format!("name: app\n{meta}services:\n  \"bad name\":\n    image: x\n"),
            &["field `services.bad name`", "not a valid service name"],
        ),
        (
            format!(
                "name: app\n{meta}services:\n  a:\n    image: a@{D1}\n    depends_on: [b]\n  b:\n    image: b@{D1}\n    depends_on: [c]\n  c:\n    image: c@{D1}\n    depends_on:\n      a: {{condition: service_healthy}}\n"
            ),
            &["release.yml:7: services depend on each other in a cycle: a -> b -> c -> a"],
        ),
        (
            format!("name: app\n{meta}services:\n  a:\n    image: a@{D1}\n    depends_on: [a]\n"),
            &["cycle: a -> a"],
        ),
        (
            format!("name: app\n{meta}{svc}{svc}"),
            &["cannot read the release as YAML", "duplicate"],
        ),
    ];
    for (text, fragments) in table {
        let err = match parse(&text, "release.yml", Mode::Committed) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e.to_string(),
        };
        for fragment in fragments {
            assert!(err.contains(fragment), "`{err}` lacks `{fragment}` in\n{text}");
        }
    }
}

#[test]
fn start_order_follows_depends_on() {
    let text = format!(
        "name: app\nx-containeros: {{version: \"1\"}}\nservices:\n  a:\n    image: a@{D1}\n    depends_on: [c]\n  b:\n    image: b@{D1}\n  c:\n    image: c@{D1}\n    depends_on: [b]\n  d:\n    image: d@{D1}\n"
    );
    assert_eq!(ok(&text).start_order(), ["b", "c", "d", "a"]);
}
