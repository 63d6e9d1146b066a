//! The OCI runtime config (`config.json`) of a service's container, as
//! Docker would set it up: the image's command, environment, user and
//! working directory under the service's overrides, Docker's default
//! capability set and masked paths, `/dev`, `/proc`, `/sys` and friends,
//! the service's mounts, tmpfs, devices, limits and hostname.
//!
//! [`build`] is pure: everything from the host (resolved user, device
//! numbers, mount sources, namespace paths) comes in through [`Plan`], so
//! the mapping is unit-tested and the I/O stays in [`crate::containers`].

use std::collections::BTreeSet;

use containeros_apps::release::Service;
use serde_json::{Value, json};

use crate::oci::RunConfig;

/// Docker's default capabilities.
pub const DEFAULT_CAPS: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// Every capability up to CAP_CHECKPOINT_RESTORE (Linux 5.9).
pub const ALL_CAPS: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

const MASKED: [&str; 9] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
];
const READONLY: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A bind mount into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub source: String,
    pub target: String,
    pub read_only: bool,
}

/// A host device node passed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNode {
    pub container_path: String,
    /// `c` or `b`.
    pub kind: char,
    pub major: u64,
    pub minor: u64,
    pub mode: u32,
    pub permissions: String,
}

/// The network namespace the container joins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    /// The host's (`network_mode: host`).
    Host,
    /// A new, empty one (loopback only).
    Isolated,
    /// One prepared by the engine (bridge networks), by path.
    Join(String),
}

/// Everything [`build`] needs besides the service and the image.
#[derive(Debug, Clone)]
pub struct Plan {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub hostname: String,
    /// Named volumes, binds, the update-lock dir, `/etc/hosts` & co.
    pub binds: Vec<Bind>,
    pub devices: Vec<DeviceNode>,
    pub network: Network,
    pub cgroups_path: String,
    /// Appended after the image's and the service's variables.
    pub extra_env: Vec<String>,
}

/// The process arguments: Docker's rules for entrypoint and command
/// (a service `entrypoint` resets the image's `Cmd`).
pub fn args(service: &Service, image: &RunConfig) -> Vec<String> {
    let entrypoint = service
        .entrypoint
        .clone()
        .or_else(|| image.entrypoint.clone())
        .unwrap_or_default();
    let cmd = match (&service.command, &service.entrypoint) {
        (Some(c), _) => c.clone(),
        (None, Some(_)) => Vec::new(),
        (None, None) => image.cmd.clone().unwrap_or_default(),
    };
    entrypoint.into_iter().chain(cmd).collect()
}

/// The environment: the image's, then the service's (overriding by name),
/// then `extra`; `PATH` defaulted and `HOSTNAME` set as Docker does.
pub fn env(service: &Service, image: &RunConfig, hostname: &str, extra: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut set = |entry: String| {
        let key = entry.split('=').next().unwrap_or("").to_owned();
        out.retain(|e| e.split('=').next() != Some(key.as_str()));
        out.push(entry);
    };
    set(DEFAULT_PATH.to_owned());
    set(format!("HOSTNAME={hostname}"));
    for e in image.env.iter().flatten() {
        set(e.clone());
    }
    for (k, v) in &service.environment {
        set(format!("{k}={v}"));
    }
    for e in extra {
        set(e.clone());
    }
    out
}

/// The capability set: Docker's defaults, plus `cap_add`, minus
/// `cap_drop`; everything when privileged.
pub fn capabilities(service: &Service) -> Vec<String> {
    let mut caps: BTreeSet<&str> = if service.privileged || service.cap_add.contains("ALL") {
        ALL_CAPS.into_iter().collect()
    } else {
        DEFAULT_CAPS.into_iter().collect()
    };
    for c in &service.cap_add {
        if c != "ALL" {
            caps.insert(c.as_str());
        }
    }
    if service.cap_drop.contains("ALL") && !service.privileged {
        caps.retain(|c| service.cap_add.contains(*c));
    }
    for c in &service.cap_drop {
        caps.remove(c.as_str());
    }
    caps.into_iter().map(|c| format!("CAP_{c}")).collect()
}

/// The `config.json` of the container (root at `rootfs` in the bundle).
pub fn build(service: &Service, image: &RunConfig, plan: &Plan) -> Value {
    let caps = capabilities(service);
    let cwd = service
        .working_dir
        .clone()
        .or_else(|| image.working_dir.clone().filter(|w| !w.is_empty()))
        .unwrap_or_else(|| "/".to_owned());
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
    ];
    let sys_ro = if service.privileged { "rw" } else { "ro" };
    if plan.network == Network::Host {
        // A new sysfs needs a new network namespace: bind the host's.
        mounts.push(json!({"destination": "/sys", "type": "bind", "source": "/sys", "options": ["rbind", "nosuid", "noexec", "nodev", sys_ro]}));
    } else {
        mounts.push(json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", sys_ro]}));
        mounts.push(json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", sys_ro]}));
    }
    for b in &plan.binds {
        let mut options = vec!["rbind", "rprivate"];
        options.push(if b.read_only { "ro" } else { "rw" });
        mounts.push(json!({"destination": b.target, "type": "bind", "source": b.source, "options": options}));
    }
    for (target, opts) in &service.tmpfs {
        let mut options: Vec<String> = vec!["nosuid".into(), "nodev".into()];
        options.extend(opts.split(',').filter(|o| !o.is_empty()).map(str::to_owned));
        mounts.push(json!({"destination": target, "type": "tmpfs", "source": "tmpfs", "options": options}));
    }
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    match &plan.network {
        Network::Host => {}
        Network::Isolated => namespaces.push(json!({"type": "network"})),
        Network::Join(path) => namespaces.push(json!({"type": "network", "path": path})),
    }
    let mut device_rules = vec![json!({"allow": service.privileged, "access": "rwm"})];
    let devices: Vec<Value> = plan
        .devices
        .iter()
        .map(|d| {
            device_rules.push(json!({"allow": true, "type": d.kind.to_string(), "major": d.major, "minor": d.minor, "access": d.permissions}));
            json!({"path": d.container_path, "type": d.kind.to_string(), "major": d.major, "minor": d.minor, "fileMode": d.mode, "uid": 0, "gid": 0})
        })
        .collect();
    let mut resources = json!({ "devices": device_rules });
    if let Some(mem) = service.mem_limit {
        resources["memory"] = json!({ "limit": mem.0, "swap": mem.0 });
    }
    if let Some(cpus) = service.cpus {
        let period: u64 = 100_000;
        resources["cpu"] = json!({ "quota": cpus.0 / 10_000, "period": period });
    }
    let mut linux = json!({
        "namespaces": namespaces,
        "cgroupsPath": plan.cgroups_path,
        "resources": resources,
        "devices": devices,
    });
    if !service.privileged {
        linux["maskedPaths"] = json!(MASKED);
        linux["readonlyPaths"] = json!(READONLY);
    }
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": { "uid": plan.uid, "gid": plan.gid, "additionalGids": plan.additional_gids },
            "args": args(service, image),
            "env": env(service, image, &plan.hostname, &plan.extra_env),
            "cwd": cwd,
            "capabilities": { "bounding": caps, "effective": caps, "permitted": caps },
            "noNewPrivileges": false,
        },
        "root": { "path": "rootfs", "readonly": service.read_only },
        "hostname": plan.hostname,
        "mounts": mounts,
        "linux": linux,
    })
}

/// Resolves `user` (`name`, `uid`, `name:group`, `uid:gid`) against the
/// container's `/etc/passwd` and `/etc/group` contents: (uid, gid,
/// supplementary gids). The error says which name is unknown.
pub fn resolve_user(user: Option<&str>, passwd: &str, group: &str) -> Result<(u32, u32, Vec<u32>), String> {
    let user = user.filter(|u| !u.is_empty()).unwrap_or("0");
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd_entry = |pred: &dyn Fn(&[&str]) -> bool| -> Option<(String, u32, u32)> {
        passwd.lines().find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 4 || !pred(&f) {
                return None;
            }
            Some((f[0].to_owned(), f[2].parse().ok()?, f[3].parse().ok()?))
        })
    };
    let (name, uid, mut gid) = if let Ok(uid) = u.parse::<u32>() {
        passwd_entry(&|f| f[2] == u).unwrap_or((String::new(), uid, 0))
    } else {
        passwd_entry(&|f| f[0] == u).ok_or_else(|| format!("user `{u}` is not in the image's /etc/passwd"))?
    };
    if let Some(g) = g {
        gid = match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group
                .lines()
                .find_map(|line| {
                    let f: Vec<&str> = line.split(':').collect();
                    (f.len() >= 3 && f[0] == g).then(|| f[2].parse().ok()).flatten()
                })
                .ok_or_else(|| format!("group `{g}` is not in the image's /etc/group"))?,
        };
    }
    let extra: Vec<u32> = if name.is_empty() {
        Vec::new()
    } else {
        group
            .lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split(':').collect();
                (f.len() >= 4 && f[3].split(',').any(|m| m == name))
                    .then(|| f[2].parse().ok())
                    .flatten()
            })
            .filter(|g| *g != gid)
            .collect()
    };
    Ok((uid, gid, extra))
}

#[cfg(test)]
mod tests {
    use super::*;
    use containeros_apps::release::{Mode, parse};

    fn service(yaml: &str) -> Service {
        let text = format!(
            "name: t\nx-containeros: {{ version: \"1\" }}\nservices:\n  s:\n    image: reg.example/app:1\n{yaml}"
        );
        let release = parse(&text, "test.yml", Mode::Development).expect("test release parses");
        release.services["s"].clone()
    }

    fn plan() -> Plan {
        Plan {
            uid: 0,
            gid: 0,
            additional_gids: vec![],
            hostname: "h".into(),
            binds: vec![],
            devices: vec![],
            network: Network::Isolated,
            cgroups_path: "/containeros/x".into(),
            extra_env: vec![],
        }
    }

    fn image() -> RunConfig {
        RunConfig {
            env: Some(vec!["PATH=/bin".into(), "A=image".into()]),
            cmd: Some(vec!["sh".into()]),
            entrypoint: Some(vec!["/init".into()]),
            working_dir: Some("/app".into()),
            ..RunConfig::default()
        }
    }

    #[test]
    fn command_and_entrypoint_follow_docker() {
        assert_eq!(args(&service(""), &image()), ["/init", "sh"]);
        assert_eq!(
            args(&service("    command: [\"x\", \"y\"]\n"), &image()),
            ["/init", "x", "y"]
        );
        // A service entrypoint drops the image's command.
        assert_eq!(args(&service("    entrypoint: [\"/e\"]\n"), &image()), ["/e"]);
    }

    #[test]
    fn environment_layers_image_service_and_extra() {
        let s = service("    environment: { A: service, B: b }\n");
        let env = env(&s, &image(), "h", &["C=c".into()]);
        assert_eq!(env, ["HOSTNAME=h", "PATH=/bin", "A=service", "B=b", "C=c"]);
    }

    #[test]
    fn capabilities_default_add_drop_and_privileged() {
        let caps = capabilities(&service("    cap_add: [NET_ADMIN]\n    cap_drop: [MKNOD]\n"));
        assert!(caps.contains(&"CAP_NET_ADMIN".to_owned()) && !caps.contains(&"CAP_MKNOD".to_owned()));
        assert!(caps.contains(&"CAP_CHOWN".to_owned()));
        assert_eq!(
            capabilities(&service("    privileged: true\n")).len(),
            ALL_CAPS.len()
        );
        assert_eq!(
            capabilities(&service("    cap_drop: [ALL]\n    cap_add: [KILL]\n")),
            ["CAP_KILL"]
        );
    }

    #[test]
    fn limits_readonly_tmpfs_and_network_reach_the_config() {
        let s = service(
            "    mem_limit: 32m\n    cpus: 0.5\n    read_only: true\n    tmpfs: [\"/run:size=1m\"]\n    network_mode: host\n",
        );
        let mut p = plan();
        p.network = Network::Host;
        let c = build(&s, &image(), &p);
        assert_eq!(c["linux"]["resources"]["memory"]["limit"], 32 << 20);
        assert_eq!(c["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(c["root"]["readonly"], true);
        assert_eq!(c["process"]["cwd"], "/app");
        let ns = c["linux"]["namespaces"].as_array().expect("namespaces");
        assert!(
            !ns.iter().any(|n| n["type"] == "network"),
            "host network: no netns"
        );
        let tmpfs = c["mounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .find(|m| m["destination"] == "/run")
            .expect("tmpfs");
        assert_eq!(tmpfs["options"], json!(["nosuid", "nodev", "size=1m"]));
    }

    #[test]
    fn users_resolve_by_name_number_and_group() {
        let passwd =
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\napp:x:1000:1000::/:/bin/sh\n";
        let group = "root:x:0:\nnogroup:x:65534:\napp:x:1000:\naudio:x:29:app\n";
        assert_eq!(resolve_user(None, passwd, group), Ok((0, 0, vec![])));
        assert_eq!(
            resolve_user(Some("nobody"), passwd, group),
            Ok((65534, 65534, vec![]))
        );
        assert_eq!(
            resolve_user(Some("app"), passwd, group),
            Ok((1000, 1000, vec![29]))
        );
        assert_eq!(resolve_user(Some("1234:5"), passwd, group), Ok((1234, 5, vec![])));
        assert_eq!(
            resolve_user(Some("app:audio"), passwd, group),
            Ok((1000, 29, vec![]))
        );
        assert!(resolve_user(Some("ghost"), passwd, group).is_err_and(|e| e.contains("ghost")));
    }
}
