//! The walk from a YAML tree to a [`Release`]. Every function returns a
//! [`Problem`] (place, dotted field, reason) that [`parse`] turns into a
//! located [`ReleaseError`].

use std::collections::{BTreeMap, BTreeSet};

use serde_yaml_ng::{Mapping, Value};

use super::error::{Place, ReleaseError};
use super::image::ImageRef;
use super::units::{Version, parse_cpus, parse_duration, parse_size};
use super::{
    Condition, DEFAULT_STOP_GRACE, Device, Duration, HealthTest, Healthcheck, Mode, Mount, MountSource,
    NetworkAttachment, NetworkDef, NetworkMode, Port, Protocol, Release, Restart, Service, UpdateStrategy,
    VolumeDef, locate,
};

#[derive(Debug)]
enum Kind {
    Unsupported,
    Invalid,
    Cycle(Vec<String>),
}

#[derive(Debug)]
struct Problem {
    place: Place,
    field: String,
    kind: Kind,
    reason: String,
}

type Res<T> = Result<T, Problem>;

/// The context of the value being read: where it is and under which field.
#[derive(Clone)]
struct At<'a> {
    place: &'a Place,
    field: String,
}

impl<'a> At<'a> {
    fn new(place: &'a Place, field: &str) -> Self {
        At {
            place,
            field: field.to_owned(),
        }
    }

    fn child(&self, key: &str) -> At<'a> {
        At {
            place: self.place,
            field: if self.field.is_empty() {
                key.to_owned()
            } else {
                format!("{}.{key}", self.field)
            },
        }
    }

    fn invalid(&self, reason: impl Into<String>) -> Problem {
        Problem {
            place: self.place.clone(),
            field: self.field.clone(),
            kind: Kind::Invalid,
            reason: reason.into(),
        }
    }

    fn unsupported(&self, reason: impl Into<String>) -> Problem {
        Problem {
            place: self.place.clone(),
            field: self.field.clone(),
            kind: Kind::Unsupported,
            reason: reason.into(),
        }
    }
}

pub fn parse(text: &str, file: &str, mode: Mode) -> Result<Release, ReleaseError> {
    let mut doc: Value = serde_yaml_ng::from_str(text).map_err(|e| ReleaseError::ReadYaml {
        file: file.to_owned(),
        line: e.location().map(|l| l.line()),
        message: e.to_string(),
    })?;
    doc.apply_merge().map_err(|e| ReleaseError::ReadYaml {
        file: file.to_owned(),
        line: e.location().map(|l| l.line()),
        message: e.to_string(),
    })?;
    release(&doc, mode).map_err(|p| locate_problem(text, file, p))
}

fn locate_problem(text: &str, file: &str, p: Problem) -> ReleaseError {
    let mut path: Vec<&str> = match &p.place {
        Place::TopLevel => vec![],
        Place::Metadata => vec!["x-containeros"],
        Place::Service(s) => vec!["services", s],
        Place::Volume(v) => vec!["volumes", v],
        Place::Network(n) => vec!["networks", n],
    };
    path.extend(p.field.split('.').filter(|s| !s.is_empty()));
    let line = locate::line_of(text, &path);
    let file = file.to_owned();
    match p.kind {
        Kind::Unsupported => ReleaseError::UnsupportedField {
            file,
            line,
            place: p.place,
            field: p.field,
            reason: p.reason,
        },
        Kind::Invalid => ReleaseError::InvalidField {
            file,
            line,
            place: p.place,
            field: p.field,
            reason: p.reason,
        },
        Kind::Cycle(cycle) => ReleaseError::DependencyCycle { file, line, cycle },
    }
}

/// The keys of a mapping, checked against the known ones before any value
/// is read, so that an unsupported field is reported even when others are
/// also wrong.
struct Fields<'v, 'a> {
    map: &'v Mapping,
    at: At<'a>,
}

impl<'v, 'a> Fields<'v, 'a> {
    /// `known`: supported keys; `refused`: known Compose keys with the
    /// reason they are refused. `x-*` keys are left to the caller.
    fn new(value: &'v Value, at: At<'a>, known: &[&str], refused: &[(&str, &str)], what: &str) -> Res<Self> {
        let Some(map) = value.as_mapping() else {
            return Err(at.invalid(format!("expected a mapping of {what}, found {}", kind_of(value))));
        };
        for key in map.keys() {
            let Some(key) = key.as_str() else {
                return Err(at.invalid(format!("keys must be strings, found {}", kind_of(key))));
            };
            if known.contains(&key) || key.starts_with("x-") {
                continue;
            }
            let reason = refused
                .iter()
                .find(|(k, _)| *k == key)
                .map_or("unknown field; check its spelling", |(_, r)| r);
            return Err(at.child(key).unsupported(reason));
        }
        Ok(Fields { map, at })
    }

    fn get(&self, key: &str) -> Option<(&'v Value, At<'a>)> {
        self.map
            .get(key)
            .filter(|v| !v.is_null())
            .map(|v| (v, self.at.child(key)))
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

const INTERPOLATION: &str = "variable interpolation is not supported: a release must mean the same on every device; write the value itself, or `$$` for a literal `$`";

/// A string as Compose would use it after interpolation: `$$` becomes `$`,
/// any other `$` is refused (Compose would substitute a variable there).
fn literal(s: &str, at: &At) -> Res<String> {
    if !s.contains('$') {
        return Ok(s.to_owned());
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '$' {
            match chars.next() {
                Some('$') => out.push('$'),
                _ => return Err(at.unsupported(INTERPOLATION)),
            }
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

fn string(v: &Value, at: &At) -> Res<String> {
    match v {
        Value::String(s) => literal(s, at),
        other => Err(at.invalid(format!("expected a string, found {}", kind_of(other)))),
    }
}

/// A string, or a number or boolean taken as its text (as Compose does for
/// environment values, labels and `user`).
fn scalar(v: &Value, at: &At) -> Res<String> {
    match v {
        Value::String(s) => literal(s, at),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(at.invalid(format!("expected a string, found {}", kind_of(other)))),
    }
}

fn boolean(v: &Value, at: &At) -> Res<bool> {
    v.as_bool()
        .ok_or_else(|| at.invalid(format!("expected true or false, found {}", kind_of(v))))
}

fn list<'v>(v: &'v Value, at: &At) -> Res<&'v Vec<Value>> {
    v.as_sequence()
        .ok_or_else(|| at.invalid(format!("expected a list, found {}", kind_of(v))))
}

fn string_list(v: &Value, at: &At) -> Res<Vec<String>> {
    list(v, at)?.iter().map(|item| scalar(item, at)).collect()
}

/// A string or a list of strings (`tmpfs`, `cap_add`).
fn string_or_list(v: &Value, at: &At) -> Res<Vec<String>> {
    match v {
        Value::Sequence(_) => string_list(v, at),
        _ => Ok(vec![string(v, at)?]),
    }
}

fn duration(v: &Value, at: &At) -> Res<Duration> {
    let s = string(v, at)?;
    parse_duration(&s).map_err(|e| at.invalid(e))
}

fn absolute_path(s: String, at: &At, what: &str) -> Res<String> {
    if s.starts_with('/') {
        Ok(s)
    } else {
        Err(at.invalid(format!("{what} `{s}` must be an absolute path")))
    }
}

/// Compose project names: lowercase letters, digits, `-` and `_`, starting
/// with a letter or digit.
fn valid_project_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_lowercase() || b.is_ascii_digit())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Compose service, volume and network keys: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
fn valid_key(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

const TOP_REFUSED: &[(&str, &str)] = &[
    (
        "version",
        "the top-level `version` is obsolete in Compose; the release version goes in `x-containeros.version`",
    ),
    (
        "secrets",
        "the agent does not distribute secrets; bind-mount a file from the data partition",
    ),
    (
        "configs",
        "the agent does not distribute configs; bind-mount a file from the data partition",
    ),
    (
        "include",
        "a release is one self-contained file; copy the services in or use YAML anchors",
    ),
    ("models", "not supported by the agent"),
];

fn release(doc: &Value, mode: Mode) -> Res<Release> {
    let top = Place::TopLevel;
    let f = Fields::new(
        doc,
        At::new(&top, ""),
        &["name", "services", "volumes", "networks", "x-containeros"],
        TOP_REFUSED,
        "top-level fields",
    )?;

    let meta = Place::Metadata;
    let (meta_value, _) = f.get("x-containeros").ok_or_else(|| {
        At::new(&top, "x-containeros")
            .invalid("release metadata is required: `x-containeros: { version: \"1.0.0\" }`")
    })?;
    let m = Fields::new(
        meta_value,
        At::new(&meta, ""),
        &["name", "version", "os_version", "update_lock_timeout"],
        &[],
        "release metadata",
    )?;

    // The name is Compose's top-level `name:`. `x-containeros.name` may
    // carry it instead, for Compose v1 (Debian 12's docker-compose 1.29),
    // which refuses a top-level `name:` and takes `-p NAME` instead.
    let mut name = None;
    for (value, at) in [f.get("name"), m.get("name")].into_iter().flatten() {
        let this = string(value, &at)?;
        if !valid_project_name(&this) {
            return Err(at.invalid(format!(
                "`{this}` is not a valid project name: use lowercase letters, digits, `-` and `_`, starting with a letter or digit"
            )));
        }
        match &name {
            Some(first) if *first != this => {
                return Err(at.invalid(format!(
                    "`{this}` differs from the top-level `name: {first}`; give the name once"
                )));
            }
            _ => name = Some(this),
        }
    }
    let name = name.ok_or_else(|| {
        At::new(&top, "name").invalid(
            "the release name is required: Compose's top-level `name:` (or `x-containeros.name` for Compose v1)",
        )
    })?;

    let version_of = |key: &str| -> Res<Option<Version>> {
        let Some((v, at)) = m.get(key) else {
            return Ok(None);
        };
        let Value::String(s) = v else {
            return Err(at.invalid(format!(
                "expected a quoted string such as \"1.4.2\", found {} (YAML would read 1.10 as 1.1)",
                kind_of(v)
            )));
        };
        s.parse().map(Some).map_err(|e: String| at.invalid(e))
    };
    let version = version_of("version")?
        .ok_or_else(|| At::new(&meta, "version").invalid("the release version is required"))?;
    let os_version = version_of("os_version")?;
    let update_lock_timeout = m
        .get("update_lock_timeout")
        .map(|(v, at)| duration(v, &at))
        .transpose()?;

    let volumes = definitions(&f, "volumes", &name, Place::Volume, "local")?
        .into_iter()
        .map(|(k, engine_name)| (k, VolumeDef { engine_name }))
        .collect::<BTreeMap<_, _>>();
    let mut networks = definitions(&f, "networks", &name, Place::Network, "bridge")?
        .into_iter()
        .map(|(k, engine_name)| (k, NetworkDef { engine_name }))
        .collect::<BTreeMap<_, _>>();

    let (services_value, services_at) = f
        .get("services")
        .ok_or_else(|| At::new(&top, "services").invalid("a release needs at least one service"))?;
    let Some(services_map) = services_value.as_mapping() else {
        return Err(services_at.invalid(format!(
            "expected a mapping of services, found {}",
            kind_of(services_value)
        )));
    };
    let mut services = BTreeMap::new();
    for (key, value) in services_map {
        let Some(key) = key.as_str() else {
            return Err(services_at.invalid("service names must be strings"));
        };
        if key.starts_with("x-") {
            return Err(services_at
                .child(key)
                .invalid("`x-` names are extensions, not services"));
        }
        if !valid_key(key) {
            return Err(services_at.child(key).invalid(
                "not a valid service name: use letters, digits, `.`, `_` and `-`, starting with a letter or digit",
            ));
        }
        let place = Place::Service(key.to_owned());
        let service = service(value, &place, mode)?;
        services.insert(key.to_owned(), service);
    }
    if services.is_empty() {
        return Err(services_at.invalid("a release needs at least one service"));
    }

    // Cross-references, checked once every service is read.
    let needs_default = services
        .values()
        .any(|s: &Service| s.network_mode.is_none() && s.networks.contains_key("default"));
    if needs_default && !networks.contains_key("default") {
        networks.insert(
            "default".to_owned(),
            NetworkDef {
                engine_name: format!("{name}_default"),
            },
        );
    }
    for (service_name, s) in &services {
        let place = Place::Service(service_name.clone());
        for dep in s.depends_on.keys() {
            if !services.contains_key(dep) {
                return Err(At::new(&place, "depends_on").invalid(format!(
                    "depends on `{dep}`, which is not a service of this release"
                )));
            }
        }
        for net in s.networks.keys() {
            if !networks.contains_key(net) {
                return Err(At::new(&place, "networks").invalid(format!(
                    "network `{net}` is not declared; add it under the top-level `networks:`"
                )));
            }
        }
        for mount in &s.volumes {
            if let MountSource::Volume(v) = &mount.source
                && !volumes.contains_key(v)
            {
                return Err(At::new(&place, "volumes").invalid(format!(
                    "volume `{v}` is not declared; add it under the top-level `volumes:`"
                )));
            }
        }
    }
    if let Some(cycle) = find_cycle(&services) {
        let place = Place::Service(cycle[0].clone());
        return Err(Problem {
            place,
            field: "depends_on".to_owned(),
            kind: Kind::Cycle(cycle),
            reason: String::new(),
        });
    }

    Ok(Release {
        name,
        version,
        os_version,
        update_lock_timeout,
        services,
        volumes,
        networks,
    })
}

/// Top-level `volumes:` or `networks:`: key → engine name. Each entry may be
/// empty or name the default driver; everything else is refused.
fn definitions(
    f: &Fields,
    section: &str,
    release: &str,
    place_of: fn(String) -> Place,
    default_driver: &str,
) -> Res<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let Some((value, at)) = f.get(section) else {
        return Ok(out);
    };
    let Some(map) = value.as_mapping() else {
        return Err(at.invalid(format!(
            "expected a mapping of {section}, found {}",
            kind_of(value)
        )));
    };
    let external = format!(
        "the agent creates and owns every {} of a release; drop `external` and let the release create it",
        section.trim_end_matches('s')
    );
    let other = "only the default driver without options is supported";
    for (key, value) in map {
        let Some(key) = key.as_str() else {
            return Err(at.invalid("names must be strings"));
        };
        if !valid_key(key) {
            return Err(at.child(key).invalid(
                "not a valid name: use letters, digits, `.`, `_` and `-`, starting with a letter or digit",
            ));
        }
        let place = place_of(key.to_owned());
        if !value.is_null() {
            let d = Fields::new(
                value,
                At::new(&place, ""),
                &["driver"],
                &[
                    ("external", &external),
                    ("name", "the agent names it `<release>_<key>` as Compose does"),
                    ("driver_opts", other),
                    ("labels", other),
                    ("ipam", other),
                    ("internal", other),
                    ("attachable", other),
                    ("enable_ipv6", other),
                ],
                "settings",
            )?;
            if let Some((v, at)) = d.get("driver") {
                let driver = string(v, &at)?;
                if driver != default_driver {
                    return Err(at.unsupported(format!("only the `{default_driver}` driver is supported")));
                }
            }
        }
        out.insert(key.to_owned(), format!("{release}_{key}"));
    }
    Ok(out)
}

const SERVICE_FIELDS: &[&str] = &[
    "image",
    "command",
    "entrypoint",
    "environment",
    "ports",
    "volumes",
    "networks",
    "network_mode",
    "depends_on",
    "healthcheck",
    "restart",
    "labels",
    "devices",
    "privileged",
    "cap_add",
    "cap_drop",
    "tmpfs",
    "read_only",
    "user",
    "working_dir",
    "mem_limit",
    "cpus",
    "stop_grace_period",
    "stop_signal",
    "hostname",
];

const NOT_YET: &str = "not supported by the agent";

const SERVICE_REFUSED: &[(&str, &str)] = &[
    (
        "build",
        "releases run prebuilt images; push the image and reference it by digest",
    ),
    (
        "env_file",
        "a release is one self-contained file; write the variables under `environment`",
    ),
    (
        "deploy",
        "swarm deployment settings do not apply to one device; use `mem_limit`, `cpus` and `restart`",
    ),
    (
        "secrets",
        "the agent does not distribute secrets; bind-mount a file from the data partition",
    ),
    (
        "configs",
        "the agent does not distribute configs; bind-mount a file from the data partition",
    ),
    (
        "extends",
        "a release is one self-contained file; copy the fields or use YAML anchors",
    ),
    (
        "profiles",
        "every service of a release runs; leave out the services a device should not run",
    ),
    (
        "container_name",
        "the agent names containers itself (`<release>_<service>_<config hash>`), which is what makes updates crash-safe",
    ),
    ("scale", "a service runs exactly one container"),
    (
        "links",
        "legacy Compose; services reach each other by name on their networks",
    ),
    (
        "external_links",
        "legacy Compose; services reach each other by name on their networks",
    ),
    (
        "pull_policy",
        "the agent pulls an image exactly when it is missing",
    ),
    (
        "platform",
        "the device runs images of its own platform; pin the digest of that platform",
    ),
    ("init", NOT_YET),
    ("dns", NOT_YET),
    ("dns_search", NOT_YET),
    ("extra_hosts", NOT_YET),
    ("logging", NOT_YET),
    ("ulimits", NOT_YET),
    ("sysctls", NOT_YET),
    ("shm_size", NOT_YET),
    ("ipc", NOT_YET),
    ("pid", NOT_YET),
    ("security_opt", NOT_YET),
    ("group_add", NOT_YET),
    ("volumes_from", NOT_YET),
    ("expose", NOT_YET),
    ("mem_reservation", NOT_YET),
    ("memswap_limit", NOT_YET),
    ("cpu_shares", NOT_YET),
    ("cpuset", NOT_YET),
    ("stdin_open", NOT_YET),
    ("tty", NOT_YET),
    ("domainname", NOT_YET),
    ("mac_address", NOT_YET),
    ("runtime", NOT_YET),
    ("develop", NOT_YET),
    ("annotations", NOT_YET),
    ("attach", NOT_YET),
];

fn service(value: &Value, place: &Place, mode: Mode) -> Res<Service> {
    let f = Fields::new(
        value,
        At::new(place, ""),
        SERVICE_FIELDS,
        SERVICE_REFUSED,
        "service fields",
    )?;

    let (image_value, image_at) = f
        .get("image")
        .ok_or_else(|| At::new(place, "image").invalid("every service needs an image (pinned by digest)"))?;
    let image_text = string(image_value, &image_at)?;
    let image: ImageRef = image_text.parse().map_err(|e: String| image_at.invalid(e))?;
    if mode == Mode::Committed && !image.is_pinned() {
        return Err(image_at.invalid(format!(
            "`{image}` is not pinned by digest: a committed release references every image as `repo@sha256:<digest>` (tags only in development mode)"
        )));
    }

    let command = f.get("command").map(|(v, at)| argv(v, &at)).transpose()?;
    let entrypoint = f.get("entrypoint").map(|(v, at)| argv(v, &at)).transpose()?;
    let environment = match f.get("environment") {
        Some((v, at)) => environment(v, &at)?,
        None => BTreeMap::new(),
    };
    let labels = match f.get("labels") {
        Some((v, at)) => labels(v, &at)?,
        None => BTreeMap::new(),
    };
    let ports = match f.get("ports") {
        Some((v, at)) => list(v, &at)?
            .iter()
            .map(|p| port(p, &at))
            .collect::<Res<Vec<_>>>()?,
        None => vec![],
    };
    let volumes = match f.get("volumes") {
        Some((v, at)) => list(v, &at)?
            .iter()
            .map(|m| mount(m, &at))
            .collect::<Res<Vec<_>>>()?,
        None => vec![],
    };
    let network_mode = match f.get("network_mode") {
        Some((v, at)) => Some(match string(v, &at)?.as_str() {
            "host" => NetworkMode::Host,
            "none" => NetworkMode::None,
            "bridge" => NetworkMode::Bridge,
            other => {
                return Err(at.unsupported(format!(
                    "`{other}`: only `host`, `none` or `bridge`; use `networks` to join the release's networks"
                )));
            }
        }),
        None => None,
    };
    let explicit_networks = f.get("networks").map(|(v, at)| networks(v, &at)).transpose()?;
    if let Some(mode) = network_mode {
        if explicit_networks.is_some() {
            return Err(At::new(place, "network_mode")
                .invalid("cannot be used together with `networks`; keep one of them"));
        }
        if mode != NetworkMode::Bridge && f.get("ports").is_some() {
            return Err(At::new(place, "ports").invalid(format!(
                "cannot publish ports with `network_mode: {}`: {}",
                if mode == NetworkMode::Host { "host" } else { "none" },
                if mode == NetworkMode::Host {
                    "the service already uses the host's ports directly"
                } else {
                    "the service has no network"
                }
            )));
        }
        if mode == NetworkMode::Host && f.get("hostname").is_some() {
            return Err(At::new(place, "hostname").invalid("cannot be set with `network_mode: host`"));
        }
    }
    let networks = match (network_mode, explicit_networks) {
        (Some(_), _) => BTreeMap::new(),
        (None, Some(n)) => n,
        // Compose's default: every service joins the project's `default`.
        (None, None) => BTreeMap::from([("default".to_owned(), NetworkAttachment::default())]),
    };
    let depends_on = match f.get("depends_on") {
        Some((v, at)) => depends_on(v, &at)?,
        None => BTreeMap::new(),
    };
    let healthcheck = f
        .get("healthcheck")
        .map(|(v, at)| healthcheck(v, &at))
        .transpose()?;
    let restart = match f.get("restart") {
        Some((v, at)) => restart(v, &at)?,
        None => Restart::No,
    };
    let devices = match f.get("devices") {
        Some((v, at)) => list(v, &at)?
            .iter()
            .map(|d| device(d, &at))
            .collect::<Res<Vec<_>>>()?,
        None => vec![],
    };
    let privileged = f
        .get("privileged")
        .map(|(v, at)| boolean(v, &at))
        .transpose()?
        .unwrap_or(false);
    let read_only = f
        .get("read_only")
        .map(|(v, at)| boolean(v, &at))
        .transpose()?
        .unwrap_or(false);
    let cap_add = f
        .get("cap_add")
        .map(|(v, at)| capabilities(v, &at))
        .transpose()?
        .unwrap_or_default();
    let cap_drop = f
        .get("cap_drop")
        .map(|(v, at)| capabilities(v, &at))
        .transpose()?
        .unwrap_or_default();
    let tmpfs = match f.get("tmpfs") {
        Some((v, at)) => tmpfs(v, &at)?,
        None => BTreeMap::new(),
    };
    let user = f.get("user").map(|(v, at)| scalar(v, &at)).transpose()?;
    let working_dir = f
        .get("working_dir")
        .map(|(v, at)| string(v, &at).and_then(|s| absolute_path(s, &at, "working directory")))
        .transpose()?;
    let mem_limit = f
        .get("mem_limit")
        .map(|(v, at)| parse_size(&scalar(v, &at)?).map_err(|e| at.invalid(e)))
        .transpose()?;
    let cpus = f
        .get("cpus")
        .map(|(v, at)| parse_cpus(&scalar(v, &at)?).map_err(|e| at.invalid(e)))
        .transpose()?;
    let stop_grace_period = f
        .get("stop_grace_period")
        .map(|(v, at)| duration(v, &at))
        .transpose()?
        .unwrap_or(DEFAULT_STOP_GRACE);
    let stop_signal = f.get("stop_signal").map(|(v, at)| signal(v, &at)).transpose()?;
    let hostname = f.get("hostname").map(|(v, at)| string(v, &at)).transpose()?;
    let update_strategy = match f.get("x-containeros") {
        Some((v, at)) => service_extension(v, &at)?,
        None => UpdateStrategy::default(),
    };

    Ok(Service {
        image,
        command,
        entrypoint,
        environment,
        ports,
        volumes,
        networks,
        network_mode,
        depends_on,
        healthcheck,
        restart,
        labels,
        devices,
        privileged,
        cap_add,
        cap_drop,
        tmpfs,
        read_only,
        user,
        working_dir,
        mem_limit,
        cpus,
        stop_grace_period,
        stop_signal,
        hostname,
        update_strategy,
    })
}

/// `command`/`entrypoint`: a list, or a string split as a shell would.
fn argv(v: &Value, at: &At) -> Res<Vec<String>> {
    match v {
        Value::Sequence(_) => string_list(v, at),
        Value::String(_) => shell_split(&string(v, at)?).map_err(|e| at.invalid(e)),
        other => Err(at.invalid(format!("expected a string or a list, found {}", kind_of(other)))),
    }
}

/// Splits like a POSIX shell (quotes and backslashes, no expansion), as
/// Compose does for the string form of `command`.
fn shell_split(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err(format!("unterminated single quote in `{s}`")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err(format!("unterminated double quote in `{s}`")),
                        },
                        Some(c) => word.push(c),
                        None => return Err(format!("unterminated double quote in `{s}`")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => word.push(c),
                    None => return Err(format!("trailing backslash in `{s}`")),
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// `KEY=value` list or `KEY: value` map; a key without a value is refused.
fn environment(v: &Value, at: &At) -> Res<BTreeMap<String, String>> {
    let no_value = |key: &str| {
        at.child(key).invalid(
            "has no value: Compose would take it from the shell, and a device has none; write `KEY=value` (or `KEY=` for empty)",
        )
    };
    let mut out = BTreeMap::new();
    match v {
        Value::Mapping(map) => {
            for (key, value) in map {
                let key = key_string(key, at)?;
                if value.is_null() {
                    return Err(no_value(&key));
                }
                let value = scalar(value, &at.child(&key))?;
                out.insert(key, value);
            }
        }
        Value::Sequence(items) => {
            for item in items {
                let item = scalar(item, at)?;
                let Some((key, value)) = item.split_once('=') else {
                    return Err(no_value(&item));
                };
                if out.insert(key.to_owned(), value.to_owned()).is_some() {
                    return Err(at.invalid(format!("`{key}` is set twice")));
                }
            }
        }
        other => return Err(at.invalid(format!("expected a mapping or a list, found {}", kind_of(other)))),
    }
    for key in out.keys() {
        if key.is_empty() || key.contains(['=', '\0']) {
            return Err(at.invalid(format!("`{key}` is not a valid variable name")));
        }
    }
    Ok(out)
}

fn key_string(key: &Value, at: &At) -> Res<String> {
    match key {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(at.invalid(format!("keys must be strings, found {}", kind_of(other)))),
    }
}

/// Label prefix the agent writes on its own containers.
const RESERVED_LABELS: &str = "org.containeros.";

fn labels(v: &Value, at: &At) -> Res<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    match v {
        Value::Mapping(map) => {
            for (key, value) in map {
                let key = key_string(key, at)?;
                let value = if value.is_null() {
                    String::new()
                } else {
                    scalar(value, &at.child(&key))?
                };
                out.insert(key, value);
            }
        }
        Value::Sequence(items) => {
            for item in items {
                let item = scalar(item, at)?;
                let (key, value) = item.split_once('=').unwrap_or((&item, ""));
                out.insert(key.to_owned(), value.to_owned());
            }
        }
        other => return Err(at.invalid(format!("expected a mapping or a list, found {}", kind_of(other)))),
    }
    if let Some(key) = out.keys().find(|k| k.starts_with(RESERVED_LABELS)) {
        return Err(at.invalid(format!(
            "`{key}`: labels starting with `{RESERVED_LABELS}` are reserved for the agent"
        )));
    }
    Ok(out)
}

fn port_number(s: &str, at: &At, what: &str) -> Res<u16> {
    if s.contains('-') {
        return Err(at.unsupported(format!("`{s}`: port ranges are not supported; list each port")));
    }
    s.parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| at.invalid(format!("invalid {what} `{s}`: expected a number from 1 to 65535")))
}

fn protocol(s: &str, at: &At) -> Res<Protocol> {
    match s {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        "sctp" => Ok(Protocol::Sctp),
        other => Err(at.invalid(format!("unknown protocol `{other}`: use tcp, udp or sctp"))),
    }
}

/// Short form `[[HOST_IP:]HOST_PORT:]CONTAINER_PORT[/PROTO]` (IPv6 host
/// addresses in brackets) or the long form mapping.
fn port(v: &Value, at: &At) -> Res<Port> {
    match v {
        Value::Number(_) | Value::String(_) => {
            let text = scalar(v, at)?;
            let (rest, proto) = match text.rsplit_once('/') {
                Some((rest, p)) => (rest, protocol(p, at)?),
                None => (text.as_str(), Protocol::Tcp),
            };
            let (host_ip, rest) = if let Some(after) = rest.strip_prefix('[') {
                let Some((ip, rest)) = after.split_once("]:") else {
                    return Err(at.invalid(format!("`{text}`: expected `[IPv6]:HOST_PORT:CONTAINER_PORT`")));
                };
                (Some(ip.to_owned()), rest.to_owned())
            } else {
                let parts: Vec<&str> = rest.split(':').collect();
                if parts.len() == 3 {
                    (Some(parts[0].to_owned()), format!("{}:{}", parts[1], parts[2]))
                } else {
                    (None, rest.to_owned())
                }
            };
            let parts: Vec<&str> = rest.split(':').collect();
            let (published, target) = match parts.as_slice() {
                [target] => (None, *target),
                ["", target] => (None, *target),
                [published, target] => (Some(port_number(published, at, "host port")?), *target),
                _ => {
                    return Err(at.invalid(format!(
                        "`{text}`: expected `[HOST_IP:][HOST_PORT:]CONTAINER_PORT[/PROTOCOL]`"
                    )));
                }
            };
            if host_ip.as_deref() == Some("") {
                return Err(at.invalid(format!("`{text}`: empty host address")));
            }
            Ok(Port {
                host_ip,
                published,
                target: port_number(target, at, "container port")?,
                protocol: proto,
            })
        }
        Value::Mapping(_) => {
            let f = Fields::new(
                v,
                at.clone(),
                &["target", "published", "host_ip", "protocol", "mode"],
                &[("name", NOT_YET), ("app_protocol", NOT_YET)],
                "port settings",
            )?;
            let (t, t_at) = f
                .get("target")
                .ok_or_else(|| at.child("target").invalid("the container port is required"))?;
            let target = port_number(&scalar(t, &t_at)?, &t_at, "container port")?;
            let published = f
                .get("published")
                .map(|(p, p_at)| port_number(&scalar(p, &p_at)?, &p_at, "host port"))
                .transpose()?;
            let host_ip = f.get("host_ip").map(|(h, h_at)| string(h, &h_at)).transpose()?;
            let proto = match f.get("protocol") {
                Some((p, p_at)) => protocol(&string(p, &p_at)?, &p_at)?,
                None => Protocol::Tcp,
            };
            // `mode` only matters to swarm; on one engine both publish on
            // the host, as `docker compose` does.
            if let Some((m, m_at)) = f.get("mode") {
                let mode = string(m, &m_at)?;
                if mode != "host" && mode != "ingress" {
                    return Err(m_at.invalid(format!("unknown mode `{mode}`: use host or ingress")));
                }
            }
            Ok(Port {
                host_ip,
                published,
                target,
                protocol: proto,
            })
        }
        other => Err(at.invalid(format!(
            "expected a port string or mapping, found {}",
            kind_of(other)
        ))),
    }
}

/// Named volume or absolute bind, short `SOURCE:TARGET[:ro|rw]` or long
/// form.
fn mount(v: &Value, at: &At) -> Res<Mount> {
    let source_of = |s: &str, at: &At| -> Res<MountSource> {
        if s.starts_with('/') {
            Ok(MountSource::Bind(s.to_owned()))
        } else if s.starts_with('.') || s.starts_with('~') {
            Err(at.invalid(format!(
                "bind source `{s}` is relative: a release has no directory of its own on the device; use an absolute path"
            )))
        } else if valid_key(s) {
            Ok(MountSource::Volume(s.to_owned()))
        } else {
            Err(at.invalid(format!("`{s}` is neither an absolute path nor a volume name")))
        }
    };
    let anonymous = |at: &At| {
        at.unsupported("anonymous volumes would be lost at every update; name the volume and declare it under the top-level `volumes:`")
    };
    match v {
        Value::String(_) => {
            let text = string(v, at)?;
            let parts: Vec<&str> = text.split(':').collect();
            let (source, target, read_only) = match parts.as_slice() {
                [_] => return Err(anonymous(at)),
                [source, target] => (*source, *target, false),
                [source, target, mode] => {
                    let mut read_only = false;
                    for opt in mode.split(',') {
                        match opt {
                            "ro" => read_only = true,
                            "rw" => read_only = false,
                            other => {
                                return Err(at.unsupported(format!(
                                    "mount option `{other}` in `{text}`: only `ro` or `rw`"
                                )));
                            }
                        }
                    }
                    (*source, *target, read_only)
                }
                _ => return Err(at.invalid(format!("`{text}`: expected `SOURCE:TARGET[:ro]`"))),
            };
            Ok(Mount {
                source: source_of(source, at)?,
                target: absolute_path(target.to_owned(), at, "mount target")?,
                read_only,
            })
        }
        Value::Mapping(_) => {
            let f = Fields::new(
                v,
                at.clone(),
                &["type", "source", "target", "read_only"],
                &[
                    ("bind", NOT_YET),
                    ("volume", NOT_YET),
                    ("tmpfs", "use the service's `tmpfs` field"),
                    ("consistency", NOT_YET),
                ],
                "mount settings",
            )?;
            let (ty, ty_at) = f.get("type").ok_or_else(|| {
                at.child("type")
                    .invalid("the mount type is required: `volume` or `bind`")
            })?;
            let ty = string(ty, &ty_at)?;
            let (target, target_at) = f
                .get("target")
                .ok_or_else(|| at.child("target").invalid("the mount target is required"))?;
            let target = absolute_path(string(target, &target_at)?, &target_at, "mount target")?;
            let source = f
                .get("source")
                .map(|(s, s_at)| Ok::<_, Problem>((string(s, &s_at)?, s_at)))
                .transpose()?;
            let source = match (ty.as_str(), source) {
                (_, None) => return Err(anonymous(at)),
                ("volume", Some((s, s_at))) => match source_of(&s, &s_at)? {
                    MountSource::Volume(v) => MountSource::Volume(v),
                    MountSource::Bind(_) => {
                        return Err(s_at.invalid(format!("`{s}` is a path; use `type: bind` for it")));
                    }
                },
                ("bind", Some((s, s_at))) => match source_of(&s, &s_at)? {
                    MountSource::Bind(p) => MountSource::Bind(p),
                    MountSource::Volume(_) => {
                        return Err(s_at.invalid(format!("bind source `{s}` must be an absolute path")));
                    }
                },
                (other, _) => {
                    return Err(ty_at.unsupported(format!("mount type `{other}`: only `volume` or `bind`")));
                }
            };
            let read_only = f
                .get("read_only")
                .map(|(r, r_at)| boolean(r, &r_at))
                .transpose()?
                .unwrap_or(false);
            Ok(Mount {
                source,
                target,
                read_only,
            })
        }
        other => Err(at.invalid(format!(
            "expected a mount string or mapping, found {}",
            kind_of(other)
        ))),
    }
}

fn networks(v: &Value, at: &At) -> Res<BTreeMap<String, NetworkAttachment>> {
    let mut out = BTreeMap::new();
    match v {
        Value::Sequence(items) => {
            for item in items {
                out.insert(string(item, at)?, NetworkAttachment::default());
            }
        }
        Value::Mapping(map) => {
            for (key, value) in map {
                let key = key_string(key, at)?;
                let attachment = if value.is_null() {
                    NetworkAttachment::default()
                } else {
                    let n_at = at.child(&key);
                    let f = Fields::new(
                        value,
                        n_at.clone(),
                        &["aliases"],
                        &[
                            ("ipv4_address", NOT_YET),
                            ("ipv6_address", NOT_YET),
                            ("link_local_ips", NOT_YET),
                            ("priority", NOT_YET),
                            ("mac_address", NOT_YET),
                            ("driver_opts", NOT_YET),
                        ],
                        "network settings",
                    )?;
                    let aliases = match f.get("aliases") {
                        Some((a, a_at)) => string_list(a, &a_at)?.into_iter().collect(),
                        None => BTreeSet::new(),
                    };
                    NetworkAttachment { aliases }
                };
                out.insert(key, attachment);
            }
        }
        other => return Err(at.invalid(format!("expected a list or a mapping, found {}", kind_of(other)))),
    }
    Ok(out)
}

fn condition(s: &str, at: &At) -> Res<Condition> {
    match s {
        "service_started" => Ok(Condition::ServiceStarted),
        "service_healthy" => Ok(Condition::ServiceHealthy),
        "service_completed_successfully" => Ok(Condition::ServiceCompletedSuccessfully),
        other => Err(at.invalid(format!(
            "unknown condition `{other}`: use service_started, service_healthy or service_completed_successfully"
        ))),
    }
}

fn depends_on(v: &Value, at: &At) -> Res<BTreeMap<String, Condition>> {
    let mut out = BTreeMap::new();
    match v {
        Value::Sequence(items) => {
            for item in items {
                out.insert(string(item, at)?, Condition::ServiceStarted);
            }
        }
        Value::Mapping(map) => {
            for (key, value) in map {
                let key = key_string(key, at)?;
                let d_at = at.child(&key);
                let f = Fields::new(
                    value,
                    d_at.clone(),
                    &["condition"],
                    &[
                        ("restart", NOT_YET),
                        ("required", "every dependency of a release is required"),
                    ],
                    "dependency settings",
                )?;
                let cond = match f.get("condition") {
                    Some((c, c_at)) => condition(&string(c, &c_at)?, &c_at)?,
                    None => Condition::ServiceStarted,
                };
                out.insert(key, cond);
            }
        }
        other => return Err(at.invalid(format!("expected a list or a mapping, found {}", kind_of(other)))),
    }
    Ok(out)
}

fn healthcheck(v: &Value, at: &At) -> Res<Healthcheck> {
    let f = Fields::new(
        v,
        at.clone(),
        &[
            "test",
            "interval",
            "timeout",
            "retries",
            "start_period",
            "disable",
        ],
        &[(
            "start_interval",
            "needs Docker API 1.44, newer than the engines the agent supports",
        )],
        "healthcheck settings",
    )?;
    let disable = f
        .get("disable")
        .map(|(d, d_at)| boolean(d, &d_at))
        .transpose()?
        .unwrap_or(false);
    let test = match (disable, f.get("test")) {
        (true, _) => HealthTest::None,
        (false, None) => {
            return Err(at
                .child("test")
                .invalid("a healthcheck needs a `test` (or `disable: true`)"));
        }
        (false, Some((t, t_at))) => match t {
            Value::String(_) => HealthTest::CmdShell(string(t, &t_at)?),
            Value::Sequence(_) => {
                let items = string_list(t, &t_at)?;
                match items.split_first() {
                    Some((first, args)) if first == "CMD" && !args.is_empty() => {
                        HealthTest::Cmd(args.to_vec())
                    }
                    Some((first, [command])) if first == "CMD-SHELL" => HealthTest::CmdShell(command.clone()),
                    Some((first, [])) if first == "NONE" => HealthTest::None,
                    _ => {
                        return Err(t_at.invalid(
                            "expected [\"CMD\", args...], [\"CMD-SHELL\", \"command\"] or [\"NONE\"]",
                        ));
                    }
                }
            }
            other => {
                return Err(t_at.invalid(format!("expected a string or a list, found {}", kind_of(other))));
            }
        },
    };
    let retries = f
        .get("retries")
        .map(|(r, r_at)| {
            r.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| r_at.invalid("expected a whole number"))
        })
        .transpose()?;
    let d = |key: &str| f.get(key).map(|(v, at)| duration(v, &at)).transpose();
    Ok(Healthcheck {
        test,
        interval: d("interval")?,
        timeout: d("timeout")?,
        retries,
        start_period: d("start_period")?,
    })
}

fn restart(v: &Value, at: &At) -> Res<Restart> {
    // YAML 1.1 readers turn a bare `no` into false; accept that spelling.
    if v.as_bool() == Some(false) {
        return Ok(Restart::No);
    }
    let s = string(v, at)?;
    match s.as_str() {
        "no" => Ok(Restart::No),
        "always" => Ok(Restart::Always),
        "unless-stopped" => Ok(Restart::UnlessStopped),
        "on-failure" => Ok(Restart::OnFailure(None)),
        other => match other.strip_prefix("on-failure:").map(str::parse::<u32>) {
            Some(Ok(n)) => Ok(Restart::OnFailure(Some(n))),
            _ => Err(at.invalid(format!(
                "`{other}`: use no, always, unless-stopped, on-failure or on-failure:N"
            ))),
        },
    }
}

/// `HOST[:CONTAINER[:PERMISSIONS]]`.
fn device(v: &Value, at: &At) -> Res<Device> {
    let text = string(v, at)?;
    let parts: Vec<&str> = text.split(':').collect();
    let (host, container, permissions) = match parts.as_slice() {
        [host] => (*host, *host, "rwm"),
        [host, container] => (*host, *container, "rwm"),
        [host, container, perms] => (*host, *container, *perms),
        _ => return Err(at.invalid(format!("`{text}`: expected `HOST_PATH[:CONTAINER_PATH[:rwm]]`"))),
    };
    if permissions.is_empty() || !permissions.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
        return Err(at.invalid(format!("`{text}`: permissions are some of `r`, `w`, `m`")));
    }
    Ok(Device {
        host: absolute_path(host.to_owned(), at, "device")?,
        container: absolute_path(container.to_owned(), at, "device")?,
        permissions: permissions.to_owned(),
    })
}

fn capabilities(v: &Value, at: &At) -> Res<BTreeSet<String>> {
    string_list(v, at)?
        .into_iter()
        .map(|c| {
            let upper = c.to_ascii_uppercase();
            let name = upper.strip_prefix("CAP_").unwrap_or(&upper).to_owned();
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
                Err(at.invalid(format!("`{c}` is not a capability name")))
            } else {
                Ok(name)
            }
        })
        .collect()
}

fn tmpfs(v: &Value, at: &At) -> Res<BTreeMap<String, String>> {
    string_or_list(v, at)?
        .into_iter()
        .map(|entry| {
            let (target, options) = entry.split_once(':').unwrap_or((&entry, ""));
            Ok((
                absolute_path(target.to_owned(), at, "tmpfs mount point")?,
                options.to_owned(),
            ))
        })
        .collect()
}

/// `SIGTERM`, `TERM` or a number; names are normalized to `SIGTERM`.
fn signal(v: &Value, at: &At) -> Res<String> {
    let s = scalar(v, at)?;
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(s);
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'+' || b == b'-')
    {
        return Err(at.invalid(format!("`{s}` is not a signal")));
    }
    Ok(format!("SIG{name}"))
}

fn service_extension(v: &Value, at: &At) -> Res<UpdateStrategy> {
    let f = Fields::new(v, at.clone(), &["update_strategy"], &[], "ContainerOS settings")?;
    match f.get("update_strategy") {
        None => Ok(UpdateStrategy::default()),
        Some((s, s_at)) => match string(s, &s_at)?.as_str() {
            "download-then-kill" => Ok(UpdateStrategy::DownloadThenKill),
            "kill-then-download" => Ok(UpdateStrategy::KillThenDownload),
            "hand-over" => Ok(UpdateStrategy::HandOver),
            other => Err(s_at.invalid(format!(
                "unknown strategy `{other}`: use download-then-kill, kill-then-download or hand-over"
            ))),
        },
    }
}

/// A `depends_on` cycle as `[a, b, a]`, if any (depth-first search).
fn find_cycle(services: &BTreeMap<String, Service>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit<'s>(
        name: &'s str,
        services: &'s BTreeMap<String, Service>,
        marks: &mut BTreeMap<&'s str, Mark>,
        stack: &mut Vec<&'s str>,
    ) -> Option<Vec<String>> {
        match marks.get(name) {
            Some(Mark::Done) => return None,
            Some(Mark::Visiting) => {
                let start = stack.iter().position(|s| *s == name).unwrap_or(0);
                let mut cycle: Vec<String> = stack[start..].iter().map(|s| (*s).to_owned()).collect();
                cycle.push(name.to_owned());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(name, Mark::Visiting);
        stack.push(name);
        if let Some(service) = services.get(name) {
            for dep in service.depends_on.keys() {
                if let Some(cycle) = visit(dep, services, marks, stack) {
                    return Some(cycle);
                }
            }
        }
        stack.pop();
        marks.insert(name, Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for name in services.keys() {
        let mut stack = Vec::new();
        if let Some(cycle) = visit(name, services, &mut marks, &mut stack) {
            return Some(cycle);
        }
    }
    None
}
