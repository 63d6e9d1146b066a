//! First-boot provisioning: a disk image with a FAT boot partition made
//! here (sfdisk, mkfs.vfat, mtools), the provisioning file put on it with
//! mtools, the partition mounted from a loop device, and the agent
//! importing and applying it.
//!
//! The test machines' kernels have no vfat, so the partition is mounted
//! with fusefat (a userspace FAT driver, read-write) instead of the kernel's
//! driver the device uses; the agent sees an ordinary mounted FAT either
//! way (files, rename over a file, directory fsync).
//!
//! Real: a loop device, a FAT driver, dbus-daemon, systemd-hostnamed and
//! NetworkManager (each in namespaces of their own, see
//! `containeros_tests::Hostnamed`), mtools and fsck.fat reading back what
//! the CLI wrote. Stand-in: systemd's unit manager (systemd is not PID 1
//! here), which starts the SSH unit and restarts timesyncd as asked.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use containeros_tests::{
    Agent, Bus, Hostnamed, NetworkManager, UnitManager, bin, cli, eventually, require_root,
};

const MIB: u64 = 1 << 20;
/// The boot partition: 1 MiB in, 64 MiB long.
const BOOT_START: u64 = MIB;
const BOOT_SECTORS: u64 = 131_072;

fn run(command: &mut Command) -> String {
    let out = command.output().unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A 96 MiB disk image: partition 1 the boot partition, partition 2 Linux.
/// `gpt`: a GPT and FAT16 (as on x86-64 EFI images), else an MBR and
/// FAT32 (as on the Raspberry Pi).
fn disk_image(dir: &Path, gpt: bool) -> PathBuf {
    let image = dir.join("disk.wic");
    let file = std::fs::File::create(&image).expect("create image");
    file.set_len(96 * MIB).expect("size image");
    let table = if gpt {
        format!(
            "label: gpt\nstart=2048, size={BOOT_SECTORS}, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\nstart=133120, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n"
        )
    } else {
        format!("label: dos\nstart=2048, size={BOOT_SECTORS}, type=c, bootable\nstart=133120, type=83\n")
    };
    let mut sfdisk = Command::new("sfdisk")
        .args(["-q", "--no-reread", "--no-tell-kernel"])
        .arg(&image)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("sfdisk (Debian package fdisk) is needed");
    use std::io::Write as _;
    sfdisk
        .stdin
        .take()
        .expect("stdin")
        .write_all(table.as_bytes())
        .expect("write table");
    assert!(sfdisk.wait().expect("sfdisk").success());
    let fat = if gpt {
        ["-F", "16", "-s", "4"]
    } else {
        ["-F", "32", "-s", "1"]
    };
    run(Command::new("mkfs.vfat")
        .args(fat)
        .args(["-n", "BOOT", "--offset", "2048"])
        .arg(&image)
        .arg((BOOT_SECTORS / 2).to_string()));
    image
}

/// Puts `text` at containeros/config.toml with mtools (not the code under test).
fn mtools_write(image: &Path, text: &str) {
    let local = image.with_extension("toml");
    std::fs::write(&local, text).expect("write");
    let _ = Command::new("mmd")
        .arg("-i")
        .arg(format!("{}@@{BOOT_START}", image.display()))
        .arg("::containeros")
        .output();
    run(Command::new("mcopy")
        .args(["-o", "-i"])
        .arg(format!("{}@@{BOOT_START}", image.display()))
        .arg(&local)
        .arg("::containeros/config.toml"));
}

fn mtools_read(image: &Path) -> String {
    run(Command::new("mtype")
        .arg("-i")
        .arg(format!("{}@@{BOOT_START}", image.display()))
        .arg("::containeros/config.toml"))
}

/// The boot partition through a loop device, mounted with fusefat (see the
/// module docs); unmounted and detached on drop.
struct Mounted {
    device: String,
    point: tempfile::TempDir,
}

impl Mounted {
    fn new(image: &Path) -> Self {
        let device = run(Command::new("losetup")
            .args(["--find", "--show", "--offset"])
            .arg(BOOT_START.to_string())
            .arg("--sizelimit")
            .arg((BOOT_SECTORS * 512).to_string())
            .arg(image))
        .trim()
        .to_owned();
        let point = tempfile::Builder::new()
            .prefix("cos-boot")
            .tempdir()
            .expect("tempdir");
        let mounted = Self { device, point };
        // Constructed first, so a failed mount still detaches the device.
        run(Command::new("fusefat")
            .args(["-o", "rw+", &mounted.device])
            .arg(mounted.point.path()));
        mounted
    }

    fn file(&self) -> PathBuf {
        self.point.path().join("containeros/config.toml")
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("fusermount")
            .arg("-u")
            .arg(self.point.path())
            .status();
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
    }
}

const SSH_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq1ZPBYzEzD0xp0w5qk6yq1cRr8pY3hU9mG3m2sK9xT tester@laptop";

/// A channel CA, as a person would paste it from its PEM file.
fn channel_ca() -> String {
    static CA: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CA.get_or_init(|| {
        let key = rcgen::KeyPair::generate().expect("ca key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).expect("ca cert").pem()
    })
    .clone()
}

fn provisioning_file(hostname: &str) -> String {
    let ca = channel_ca();
    format!(
        r#"# written on a laptop
[device]
hostname = "{hostname}"

[channel]
ca = """
{ca}"""

[[wifi]]
ssid = "Shop"
psk = "correct horse battery"

[[wifi]]
ssid = "Office"
eap = "peap"
identity = "device01"
password = "s3cret-enterprise"
ipv4 = "static"
address = "192.168.7.20/24"
gateway = "192.168.7.1"
dns = ["192.168.7.1"]

[ssh]
authorized_keys = ["{SSH_KEY}"]

[time]
servers = ["ntp1.example.net", "10.0.0.1"]
"#
    )
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

struct Rig {
    agent: Agent,
    units: UnitManager,
    network: NetworkManager,
    hostnamed: Hostnamed,
    state: tempfile::TempDir,
    bus: Bus,
}

impl Rig {
    async fn start(boot_file: &Path) -> Self {
        let bus = Bus::start();
        let ssh = vec![
            "sh".to_owned(),
            "-c".to_owned(),
            "systemd-notify --ready 2>/dev/null || true; exec sleep 600".to_owned(),
        ];
        let units = UnitManager::start(&bus, &[("sshd.socket", ssh)]).await;
        let hostnamed = Hostnamed::start(&bus).await;
        let network = NetworkManager::start(&bus).await;
        let state = tempfile::tempdir().expect("tempdir");
        let agent = Agent::start(&format!(
            r#"
[agent]
state_dir = "{state}"
log_level = "debug"
[dbus]
bus = "{bus}"
[engine]
socket = "{state}/no-engine.sock"
unit = ""
[update]
bootloader = "none"
[provision]
file = "{file}"
timesyncd_dir = "{state}/timesyncd.conf.d"
hostname_file = "{state}/hostname"
authorized_keys = "{state}/ssh/authorized_keys"
ssh_unit = "sshd.socket"
"#,
            state = state.path().display(),
            bus = bus.address(),
            file = boot_file.display(),
        ));
        Self {
            agent,
            units,
            network,
            hostnamed,
            state,
            bus,
        }
    }

    fn status(&self) -> serde_json::Value {
        let out = cli(self.bus.address())
            .args(["status", "--json"])
            .output()
            .expect("cli");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("JSON")
    }

    fn debug(&self) -> String {
        format!(
            "agent:\n{}\nhostnamed:\n{}\nNetworkManager:\n{}",
            self.agent.stderr(),
            self.hostnamed.log(),
            self.network.log()
        )
    }

    fn profile(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.network.connections().join(format!("{name}.nmconnection"))).ok()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn first_boot_imports_applies_and_scrubs_the_boot_partition() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let image = disk_image(dir.path(), false);
    mtools_write(&image, &provisioning_file("kiosk-7"));
    let boot = Mounted::new(&image);
    let mut rig = Rig::start(&boot.file()).await;

    // Imported, and the host name set through the real hostnamed.
    let status = eventually(90, "provisioning imported", || async {
        let s = rig.status();
        s["provisioning"]
            .as_str()
            .is_some_and(|p| p.starts_with("imported "))
            .then_some(s)
    })
    .await;
    eventually(90, "host name applied", || async {
        (rig.hostnamed.static_hostname().as_deref() == Some("kiosk-7")).then_some(())
    })
    .await;

    // The device id: a UUID kept on /data, the same on D-Bus.
    let id = std::fs::read_to_string(rig.state.path().join("device-id")).expect("device-id");
    assert_eq!(status["device_id"], id.trim(), "{status}");
    assert_eq!(id.trim().len(), 36);

    // NetworkManager got the profiles through its API, secrets included,
    // in its own root-only keyfiles.
    let shop = eventually(90, "Wi-Fi profiles in NetworkManager", || async {
        rig.profile("containeros-wifi-Shop")
            .zip(rig.profile("containeros-wifi-Office"))
    })
    .await;
    assert!(shop.0.contains("psk=correct horse battery"), "{}", shop.0);
    assert!(shop.1.contains("password=s3cret-enterprise"), "{}", shop.1);
    assert!(shop.1.contains("address1=192.168.7.20/24"), "{}", shop.1);
    assert_eq!(
        mode(
            &rig.network
                .connections()
                .join("containeros-wifi-Shop.nmconnection")
        ),
        0o600
    );
    // Plain DHCP Ethernet needs no profile of the agent's.
    assert!(rig.profile("containeros-ethernet").is_none());

    // The secrets left the FAT partition, and are on /data, root only.
    let on_boot = std::fs::read_to_string(boot.file()).expect("read boot file");
    assert!(
        !on_boot.contains("correct horse") && !on_boot.contains("s3cret"),
        "{on_boot}"
    );
    assert!(on_boot.contains("# psk: stored on the device"), "{on_boot}");
    assert!(on_boot.contains("hostname = \"kiosk-7\""), "{on_boot}");
    let stored = rig.state.path().join("provision/config.json");
    assert!(
        std::fs::read_to_string(&stored)
            .expect("stored")
            .contains("correct horse battery")
    );
    assert_eq!(mode(&stored), 0o600);
    assert_eq!(mode(&rig.state.path().join("provision")), 0o700);
    // The channel CA: kept beside the agent settings that name it, and
    // left on the boot partition (it is no secret).
    assert!(on_boot.contains(channel_ca().trim()), "{on_boot}");
    let ca_file = rig.state.path().join("provision/channel-ca.pem");
    assert_eq!(
        std::fs::read_to_string(&ca_file).expect("channel CA"),
        channel_ca()
    );
    let settings = std::fs::read_to_string(rig.state.path().join("provision/agent.toml")).expect("settings");
    assert!(
        settings.contains(&format!("ca_file = \"{}\"", ca_file.display())),
        "{settings}"
    );

    // Time servers and SSH.
    // (The steps run one after the other: wait for each.)
    let dropin = rig.state.path().join("timesyncd.conf.d/containeros.conf");
    let timesyncd = eventually(90, "timesyncd drop-in", || async {
        std::fs::read_to_string(&dropin).ok()
    })
    .await;
    assert!(timesyncd.contains("NTP=ntp1.example.net 10.0.0.1"), "{timesyncd}");
    eventually(90, "timesyncd restarted", || async {
        (rig.units.try_restarts("systemd-timesyncd.service") == 1).then_some(())
    })
    .await;
    let keys = rig.state.path().join("ssh/authorized_keys");
    let written = eventually(90, "authorized keys written", || async {
        std::fs::read_to_string(&keys).ok()
    })
    .await;
    assert_eq!(written.trim(), SSH_KEY);
    assert_eq!(mode(&keys), 0o600);
    eventually(90, "sshd started", || async {
        (rig.units.starts("sshd.socket") == 1).then_some(())
    })
    .await;
    let human = run(cli(rig.bus.address()).arg("status"));
    assert!(human.contains(&format!("Device id:    {}", id.trim())), "{human}");
    assert!(human.contains("Provisioning: imported "), "{human}");
    assert!(
        !rig.status()["provisioning"]
            .as_str()
            .unwrap_or_default()
            .contains("not applied"),
        "{}",
        rig.debug()
    );

    // Next boot, same file: nothing imported again, nothing rewritten.
    rig.agent.terminate();
    rig.agent.restart();
    let s = eventually(90, "status after restart", || async {
        let s = rig.status();
        s["provisioning"]
            .as_str()
            .is_some_and(|p| !p.is_empty())
            .then_some(s)
    })
    .await;
    assert!(
        s["provisioning"]
            .as_str()
            .unwrap_or_default()
            .starts_with("in force: "),
        "{s}"
    );
    assert_eq!(s["device_id"], id.trim());

    // A half-written edit (the laptop lost power while saving): reported
    // with line and key; the previous configuration stays in force.
    let before = std::fs::read(&stored).expect("stored");
    let cut = on_boot.replace("kiosk-7", "kiosk-8");
    let cut = &cut[..cut.find("[[wifi]]\nssid = \"Office\"").expect("office") + 16];
    rewrite(&boot.file(), cut);
    rig.agent.terminate();
    rig.agent.restart();
    let s = eventually(90, "refused edit reported", || async {
        let s = rig.status();
        s["provisioning"]
            .as_str()
            .is_some_and(|p| p.starts_with("not imported"))
            .then_some(s)
    })
    .await;
    let message = s["provisioning"].as_str().unwrap_or_default();
    let file = boot.file().display().to_string();
    assert!(message.contains(&format!("{file}:")), "{message}");
    assert!(message.contains("still in force: "), "{message}");
    let line = cut.lines().count();
    assert!(message.contains(&format!(":{line}:")), "line {line} in {message}");
    assert_eq!(std::fs::read(&stored).expect("stored"), before);
    assert_eq!(rig.hostnamed.static_hostname().as_deref(), Some("kiosk-7"));
    assert!(
        rig.agent.stderr().contains("provisioning: not imported"),
        "{}",
        rig.agent.stderr()
    );

    // A complete edit is applied at the next boot; the scrubbed passphrase
    // comes from /data.
    rewrite(&boot.file(), &on_boot.replace("kiosk-7", "kiosk-8"));
    rig.agent.terminate();
    rig.agent.restart();
    eventually(90, "edited host name applied", || async {
        (rig.hostnamed.static_hostname().as_deref() == Some("kiosk-8")).then_some(())
    })
    .await;
    let shop = rig.profile("containeros-wifi-Shop").expect("profile kept");
    assert!(shop.contains("psk=correct horse battery"), "{shop}");
    assert!(
        rig.status()["provisioning"]
            .as_str()
            .unwrap_or_default()
            .starts_with("imported ")
    );

    // The kernel's vfat and an independent reader agree on the file, and
    // the file system is clean.
    drop(rig);
    let scrubbed = std::fs::read_to_string(boot.file()).expect("read");
    drop(boot);
    assert_eq!(mtools_read(&image), scrubbed);
    fsck_clean(&image);
}

/// Replaces the file on the mounted FAT as a new file: fusefat does not
/// shorten a file opened with O_TRUNC (what is left past the new end reads
/// as NUL bytes, which the agent refuses, as the unit tests show).
fn rewrite(path: &Path, text: &str) {
    std::fs::remove_file(path).expect("remove");
    std::fs::write(path, text).expect("write");
}

fn fsck_clean(image: &Path) {
    let part = image.with_extension("fat");
    run(Command::new("dd")
        .arg(format!("if={}", image.display()))
        .arg(format!("of={}", part.display()))
        .args(["bs=1M", "skip=1", "count=64", "status=none"]));
    run(Command::new("fsck.fat").arg("-n").arg(&part));
}

/// The host side: `containeros provision` writes into an image file
/// without mounting it (no loop device, no root), and what it wrote reads
/// back identically through the CLI and through mtools.
#[test]
fn containeros_provision_edits_an_image_and_it_reads_back() {
    for gpt in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = disk_image(dir.path(), gpt);
        let containeros = || Command::new(bin("containeros"));

        let out = containeros()
            .args(["provision", "show"])
            .arg(&image)
            .output()
            .expect("cli");
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("has no containeros/config.toml"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );

        run(containeros().args(["provision", "init"]).arg(&image));
        assert_eq!(mtools_read(&image), containeros_provision_template());

        let text = provisioning_file("shop-window-3");
        let local = dir.path().join("config.toml");
        std::fs::write(&local, &text).expect("write");
        let said = run(containeros().args(["provision", "write"]).arg(&image).arg(&local));
        assert!(said.contains("partition 1, at byte 1048576"), "{said}");
        assert_eq!(run(containeros().args(["provision", "show"]).arg(&image)), text);
        assert_eq!(mtools_read(&image), text);
        run(containeros().args(["provision", "check"]).arg(&image));
        fsck_clean(&image);

        // A bad file is refused with its line and key; the image keeps the
        // good one.
        std::fs::write(&local, "[device]\nhostname = \"not a name\"\n").expect("write");
        let out = containeros()
            .args(["provision", "write"])
            .arg(&image)
            .arg(&local)
            .output()
            .expect("cli");
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("{}:2:12: device.hostname: ", local.display())),
            "{stderr}"
        );
        assert_eq!(mtools_read(&image), text);
    }
}

fn containeros_provision_template() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/dist/provision-config.toml"))
        .expect("template")
}
