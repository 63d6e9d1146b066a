//! Bridge networks of the native engine, built with the tools the image
//! ships (`ip` from iproute2, `nft` from nftables): per network a Linux
//! bridge with a /24 from 10.213.0.0/16 and an nftables table that
//! masquerades its traffic out; per container a network namespace
//! (`/run/netns/cos<id>`) with one veth per network, an address, a default
//! route through the first network, and an nftables table that forwards
//! its published ports (DNAT from any local address, or the one given).
//! Services find each other by name through `/etc/hosts`, rewritten in
//! place for every container of a network when one joins or leaves.
//!
//! Everything here is recreated when a container starts (bridges, tables
//! and namespaces live in RAM and vanish at reboot); what must persist —
//! the subnet of a network, the address of a container — is in the
//! records on the data partition.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::store::write_atomic;

/// A network as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    pub name: String,
    pub release: String,
    /// The Linux bridge, `cos` + 10 hex digits.
    pub bridge: String,
    /// The third octet of 10.213.X.0/24.
    pub subnet: u8,
}

impl NetworkRecord {
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.subnet, 1)
    }
    fn table(&self) -> String {
        format!("n{}", self.bridge)
    }
}

/// A container's place on one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub network: String,
    pub bridge: String,
    pub address: Ipv4Addr,
    pub gateway: Ipv4Addr,
    /// Names the other members resolve to this container.
    pub aliases: Vec<String>,
}

/// A published port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMap {
    pub host_ip: Option<String>,
    pub host_port: u16,
    pub target: u16,
    /// `tcp`, `udp`, `sctp`.
    pub protocol: String,
}

fn failed(what: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::Network {
        what: what.into(),
        reason: reason.into(),
    }
}

/// Runs `program args`; the error quotes its stderr.
fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
    use std::io::Write as _;
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            failed(
                format!("{program} {}", args.join(" ")),
                format!("cannot run {program}: {e} (install iproute2 and nftables)"),
            )
        })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|e| failed(program, format!("writing its input: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| failed(program, e.to_string()))?;
    if !out.status.success() {
        return Err(failed(
            format!("{program} {}", args.join(" ")),
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The networks of one engine, under `<data>/networks`.
#[derive(Debug)]
pub struct Networks {
    dir: PathBuf,
}

impl Networks {
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
        Ok(Self { dir: dir.to_owned() })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    pub fn get(&self, name: &str) -> Result<Option<NetworkRecord>> {
        let path = self.path(name);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| Error::Record {
                path,
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("reading", &path)(e)),
        }
    }

    pub fn list(&self) -> Result<Vec<NetworkRecord>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.dir).map_err(Error::io("reading", &self.dir))? {
            let path = e.map_err(Error::io("reading", &self.dir))?.path();
            if path.extension().is_some_and(|x| x == "json")
                && let Ok(bytes) = std::fs::read(&path)
                && let Ok(r) = serde_json::from_slice::<NetworkRecord>(&bytes)
            {
                out.push(r);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Records a new network (a subnet no other network of ours and no
    /// host route uses) and brings it up. `false` when it exists.
    pub fn create(&self, name: &str, release: &str) -> Result<bool> {
        if self.get(name)?.is_some() {
            return Ok(false);
        }
        let seed = Digest::of(format!("{}\n{name}", self.dir.display()).as_bytes());
        let bridge = format!("cos{}", &seed.hex()[..10]);
        let taken: Vec<u8> = self.list()?.iter().map(|n| n.subnet).collect();
        let routes = run("ip", &["-4", "route", "show", "table", "all"], None).unwrap_or_default();
        let start = u8::from_str_radix(&seed.hex()[10..12], 16).unwrap_or(0);
        let subnet = (0..=255u8)
            .map(|i| start.wrapping_add(i))
            .find(|x| !taken.contains(x) && !routes.contains(&format!("10.213.{x}.")))
            .ok_or_else(|| failed(format!("network {name}"), "no free /24 left in 10.213.0.0/16"))?;
        let record = NetworkRecord {
            name: name.to_owned(),
            release: release.to_owned(),
            bridge,
            subnet,
        };
        let bytes = serde_json::to_vec_pretty(&record).map_err(|e| failed(name, e.to_string()))?;
        write_atomic(&self.path(name), &bytes)?;
        std::fs::create_dir_all(self.leases(name)).map_err(Error::io("creating", self.leases(name)))?;
        up(&record)?;
        Ok(true)
    }

    /// Removes the network; `false` when it does not exist.
    pub fn remove(&self, name: &str) -> Result<bool> {
        let Some(record) = self.get(name)? else {
            return Ok(false);
        };
        let _ = run("nft", &["delete", "table", "ip", &record.table()], None);
        if Path::new("/sys/class/net").join(&record.bridge).exists() {
            run("ip", &["link", "del", &record.bridge], None)?;
        }
        let _ = std::fs::remove_dir_all(self.leases(name));
        std::fs::remove_file(self.path(name)).map_err(Error::io("removing", self.path(name)))?;
        Ok(true)
    }

    fn leases(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// An address on `network` for `container` (leases are files named by
    /// the address, holding the container id).
    pub fn lease(&self, network: &str, container: &str, aliases: Vec<String>) -> Result<Attachment> {
        let record = self.get(network)?.ok_or_else(|| {
            failed(
                format!("network {network}"),
                "no such network: the release creates it first",
            )
        })?;
        let dir = self.leases(network);
        std::fs::create_dir_all(&dir).map_err(Error::io("creating", &dir))?;
        for host in 2..=254u8 {
            let address = Ipv4Addr::new(10, 213, record.subnet, host);
            let path = dir.join(address.to_string());
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(_) => {
                    write_atomic(&path, container.as_bytes())?;
                    return Ok(Attachment {
                        network: network.to_owned(),
                        bridge: record.bridge.clone(),
                        address,
                        gateway: record.gateway(),
                        aliases,
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::io("creating", &path)(e)),
            }
        }
        Err(failed(
            format!("network {network}"),
            "all 253 addresses are taken",
        ))
    }

    /// Drops leases held by no container of `containers` (a create that
    /// was interrupted, a half-written lease).
    pub fn release_orphans(&self, containers: &std::collections::BTreeSet<String>) -> Result<()> {
        for network in self.list()? {
            let dir = self.leases(&network.name);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let holder = std::fs::read_to_string(e.path()).unwrap_or_default();
                if !containers.contains(holder.trim()) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(())
    }

    pub fn release(&self, attachment: &Attachment) {
        let _ = std::fs::remove_file(
            self.leases(&attachment.network)
                .join(attachment.address.to_string()),
        );
    }

    /// Brings a network up again (after a reboot): bridge and masquerade.
    pub fn ensure(&self, name: &str) -> Result<()> {
        match self.get(name)? {
            Some(record) => up(&record),
            None => Err(failed(format!("network {name}"), "no such network")),
        }
    }
}

/// The bridge with its gateway address, forwarding on, and the table that
/// masquerades the subnet's traffic leaving it.
fn up(record: &NetworkRecord) -> Result<()> {
    let br = &record.bridge;
    if !Path::new("/sys/class/net").join(br).exists() {
        run("ip", &["link", "add", br, "type", "bridge"], None)?;
    }
    let cidr = format!("{}/24", record.gateway());
    let addrs = run("ip", &["-4", "addr", "show", "dev", br], None)?;
    if !addrs.contains(&format!("inet {cidr}")) {
        run("ip", &["addr", "add", &cidr, "dev", br], None)?;
    }
    run("ip", &["link", "set", br, "up"], None)?;
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(Error::io(
        "enabling forwarding in",
        "/proc/sys/net/ipv4/ip_forward",
    ))?;
    let table = record.table();
    let script = format!(
        "table ip {table} {{}}\nflush table ip {table}\ntable ip {table} {{\n  chain post {{\n    type nat hook postrouting priority srcnat; policy accept;\n    ip saddr 10.213.{}.0/24 oifname != \"{br}\" masquerade\n  }}\n}}\n",
        record.subnet
    );
    run("nft", &["-f", "-"], Some(&script)).map(drop)
}

/// The network namespace path of a container.
pub fn netns_path(id: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(netns_name(id))
}

fn netns_name(id: &str) -> String {
    format!("cos{}", &id[..id.len().min(12)])
}

/// Creates the container's namespace with a veth on each network (nothing
/// when it is there already).
pub fn attach(id: &str, attachments: &[Attachment]) -> Result<()> {
    let ns = netns_name(id);
    if netns_path(id).exists() {
        return Ok(());
    }
    run("ip", &["netns", "add", &ns], None)?;
    let result = (|| -> Result<()> {
        run("ip", &["-n", &ns, "link", "set", "lo", "up"], None)?;
        for (i, a) in attachments.iter().enumerate() {
            let host = format!("cv{}{i}", &id[..id.len().min(11)]);
            let inner = format!("eth{i}");
            if Path::new("/sys/class/net").join(&host).exists() {
                run("ip", &["link", "del", &host], None)?;
            }
            run(
                "ip",
                &[
                    "link", "add", &host, "type", "veth", "peer", "name", &inner, "netns", &ns,
                ],
                None,
            )?;
            run("ip", &["link", "set", &host, "master", &a.bridge, "up"], None)?;
            run(
                "ip",
                &[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("{}/24", a.address),
                    "dev",
                    &inner,
                ],
                None,
            )?;
            run("ip", &["-n", &ns, "link", "set", &inner, "up"], None)?;
            if i == 0 {
                run(
                    "ip",
                    &[
                        "-n",
                        &ns,
                        "route",
                        "add",
                        "default",
                        "via",
                        &a.gateway.to_string(),
                    ],
                    None,
                )?;
            }
        }
        Ok(())
    })();
    if result.is_err() {
        detach(id);
    }
    result
}

/// Removes the container's namespace (its veths go with it).
pub fn detach(id: &str) {
    if netns_path(id).exists() {
        let _ = run("ip", &["netns", "del", &netns_name(id)], None);
    }
}

fn ports_table(id: &str) -> String {
    format!("p{}", &id[..id.len().min(12)])
}

/// Forwards `ports` of the host to the container at `address`.
pub fn publish(id: &str, address: Ipv4Addr, ports: &[PortMap]) -> Result<()> {
    if ports.is_empty() {
        return Ok(());
    }
    let table = ports_table(id);
    let mut rules = String::new();
    for p in ports {
        let dst = match &p.host_ip {
            Some(ip) if ip != "0.0.0.0" => format!("ip daddr {ip}"),
            _ => "fib daddr type local".to_owned(),
        };
        rules.push_str(&format!(
            "    {dst} {proto} dport {} dnat to {address}:{}\n",
            p.host_port,
            p.target,
            proto = p.protocol
        ));
    }
    let script = format!(
        "table ip {table} {{}}\nflush table ip {table}\ntable ip {table} {{\n  chain pre {{\n    type nat hook prerouting priority dstnat; policy accept;\n{rules}  }}\n  chain out {{\n    type nat hook output priority -100; policy accept;\n{rules}  }}\n}}\n"
    );
    run("nft", &["-f", "-"], Some(&script)).map(drop)
}

pub fn unpublish(id: &str) {
    let _ = run("nft", &["delete", "table", "ip", &ports_table(id)], None);
}

/// `/etc/hosts` for a container: localhost, itself, then every member of
/// its networks by alias.
pub fn hosts_file(hostname: &str, own: &[Attachment], members: &BTreeMap<Ipv4Addr, Vec<String>>) -> String {
    let mut out = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    match own.first() {
        Some(a) => out.push_str(&format!("{}\t{hostname}\n", a.address)),
        None => out.push_str(&format!("127.0.1.1\t{hostname}\n")),
    }
    for (ip, names) in members {
        if !names.is_empty() {
            out.push_str(&format!("{ip}\t{}\n", names.join(" ")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_list_the_container_then_its_peers() {
        let own = [Attachment {
            network: "n".into(),
            bridge: "cosx".into(),
            address: Ipv4Addr::new(10, 213, 1, 2),
            gateway: Ipv4Addr::new(10, 213, 1, 1),
            aliases: vec!["web".into()],
        }];
        let members = BTreeMap::from([(
            Ipv4Addr::new(10, 213, 1, 3),
            vec!["db".to_owned(), "database".to_owned()],
        )]);
        assert_eq!(
            hosts_file("abc", &own, &members),
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n10.213.1.2\tabc\n10.213.1.3\tdb database\n"
        );
    }
}
