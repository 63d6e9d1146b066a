#!/usr/bin/env python3
"""The simulated device: a QEMU x86-64 machine booting the A/B disk that
tests/vm/mkdisk.sh assembles, driven from the host.

    tests/vm/vm.py build                 build (or reuse) the disk; print its directory
    tests/vm/vm.py demo                  boot, publish an update, watch it commit
    tests/vm/vm.py test [NAME...]        the system tests (all by default), in
                                         order on one device through its life:
                                         provision, update, rollback, kernel,
                                         powercut (--each: a fresh device each)
    tests/vm/vm.py shell                 boot and keep running; prints how to reach it

How the host reaches the device (QEMU user networking, no root needed for
the machine itself):

- the serial console (GRUB, kernel, systemd, and the agent's log through
  journald) goes to console.log in the run directory;
- the guest's system bus is bridged to TCP port 7000 (tests/vm/guest/),
  forwarded to a loopback port on the host, and bridged again to a Unix
  socket there: the host runs the real `containeros` CLI with
  DBUS_SYSTEM_BUS_ADDRESS pointing at it;
- the channel is served over HTTPS (test CA) from the host, and reaches the
  guest as https://10.0.2.100/ (a guestfwd per connection);
- the host's registry (127.0.0.1:5000) is bridged to the guest's
  127.0.0.1:5000, so app images keep the names they were published under.

Needs root (mkroot.sh/mkdisk.sh), qemu-system-x86, ovmf, mmdebstrap,
grub-efi-amd64-bin, socat, dockerd on /run/docker.sock and the registry on
127.0.0.1:5000 (scripts/services.sh). Timings are printed, never asserted.
"""

import argparse
import functools
import http.server
import json
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VM = REPO / "tests" / "vm"
OVMF = Path("/usr/share/ovmf/OVMF.fd")
REGISTRY = "127.0.0.1:5000"
APP_REPO = f"{REGISTRY}/containeros-vm/app"
READY_LINE = "Started containeros-agent.service"
# The agent's log line once the image is in the slot and checked: the
# bootloader switch follows within a second, then the reboot.
VERIFIED_LINE = "OS image written and its SHA-256 matches the manifest"


def log(msg):
    print(f"[vm {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Failure(Exception):
    pass


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, text=True, **kw)


# ---------------------------------------------------------------- build


def target_dir():
    return Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "release"


def build():
    """The disk directory (mkdisk.sh's output), built if needed."""
    t0 = time.monotonic()
    root = run([str(VM / "mkroot.sh")], stdout=subprocess.PIPE).stdout.strip()
    log(f"root tree: {root} ({time.monotonic() - t0:.0f} s)")
    t1 = time.monotonic()
    run(["cargo", "build", "--release", "--locked", "-q",
         "-p", "containeros-agent", "-p", "containeros-cli", "-p", "containeros-publish"], cwd=REPO)
    log(f"agent built ({time.monotonic() - t1:.0f} s)")
    t2 = time.monotonic()
    disk = run([str(VM / "mkdisk.sh"), root, str(target_dir())], stdout=subprocess.PIPE).stdout.strip()
    log(f"disk: {disk} ({time.monotonic() - t2:.0f} s)")
    return Path(disk)


# ---------------------------------------------------------------- app images


def app_image(variant):
    """Pushes a one-layer busybox image whose /variant says `variant`;
    returns its name by tag."""
    tag = f"{APP_REPO}:{variant}"
    with tempfile.TemporaryDirectory() as tmp:
        layer = Path(tmp) / "layer.tar"
        with tarfile.open(layer, "w") as tar:
            def add(name, data=None, link=None, mode=0o755, kind=tarfile.REGTYPE):
                info = tarfile.TarInfo(name)
                info.mtime, info.mode, info.type = 0, mode, kind
                if link:
                    info.type, info.linkname = tarfile.SYMTYPE, link
                    tar.addfile(info)
                elif kind == tarfile.DIRTYPE:
                    tar.addfile(info)
                else:
                    info.size = len(data)
                    import io
                    tar.addfile(info, io.BytesIO(data))
            for d in ("bin", "state", "tmp"):
                add(d, kind=tarfile.DIRTYPE)
            add("bin/busybox", Path("/bin/busybox").read_bytes())
            for tool in ("sh", "cat", "echo", "sleep", "sync", "date", "tail", "ls"):
                add(f"bin/{tool}", link="busybox")
            add("variant", f"{variant}\n".encode(), mode=0o644)
        run(["docker", "import", "--change", "ENV PATH=/bin", "--change", 'CMD ["sh"]',
             str(layer), tag], stdout=subprocess.DEVNULL)
    run(["docker", "push", "-q", tag], stdout=subprocess.DEVNULL)
    return tag


def compose(variant, image, version):
    # The app appends one line per start to a file in its named volume and
    # prints the whole file: its logs show what survived.
    return f"""name: demo
x-containeros:
  version: "{version}"
services:
  app:
    image: {image}
    command: ["sh", "-c", "echo \\"start $$(cat /variant)\\" >> /state/log; sync; cat /state/log; trap 'exit 0' TERM; sleep 100000 & wait"]
    volumes:
      - state:/state
volumes:
  state: {{}}
"""


# ---------------------------------------------------------------- channel


class Channel:
    """A channel directory served over HTTPS on a loopback port; follows
    the OS image's requests and the position the latest one reached (for
    power cuts)."""

    def __init__(self, disk, run_dir):
        self.disk = disk
        self.root = run_dir / "www"
        self.dir = self.root / "stable"
        self.dir.mkdir(parents=True)
        self.version = 0
        self.image_requests = 0
        self.request_bytes = 0
        channel = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            # A connection the guest's power cut left half-open ends here.
            timeout = 120

            def log_message(self, *args):
                pass

            # Single byte ranges (`Range: bytes=a-b`, `If-Range`), as any
            # web server or CDN answers them: the chunk archive is read by
            # ranges, and an interrupted download resumes.
            remaining = None
            etag = None
            offset = 0
            # Keep-alive: the chunk archive's ranges over one connection.
            protocol_version = "HTTP/1.1"

            def send_head(self):
                self.remaining, self.etag, self.offset = None, None, 0
                path = self.translate_path(self.path)
                if not os.path.isfile(path):
                    return super().send_head()
                st = os.stat(path)
                self.etag = f'"{st.st_mtime_ns:x}-{st.st_size:x}"'
                wanted = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", "").strip())
                if_range = self.headers.get("If-Range")
                if not wanted or (if_range and if_range not in (self.etag, self.date_time_string(int(st.st_mtime)))):
                    return super().send_head()
                start = int(wanted[1])
                end = min(int(wanted[2]) if wanted[2] else st.st_size - 1, st.st_size - 1)
                if start >= st.st_size or end < start:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{st.st_size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                f = open(path, "rb")
                f.seek(start)
                self.offset = start
                self.remaining = end - start + 1
                self.send_response(206)
                self.send_header("Content-Type", self.guess_type(path))
                self.send_header("Content-Range", f"bytes {start}-{end}/{st.st_size}")
                self.send_header("Content-Length", str(self.remaining))
                self.send_header("Last-Modified", self.date_time_string(int(st.st_mtime)))
                self.end_headers()
                return f

            def end_headers(self):
                if self.etag:
                    self.send_header("ETag", self.etag)
                    self.send_header("Accept-Ranges", "bytes")
                super().end_headers()

            def copyfile(self, source, outputfile):
                image = self.path.endswith(".img")
                if image:
                    channel.image_requests += 1
                    # Where in the image this response is (a resumed
                    # download starts where the last one stopped).
                    channel.request_bytes = self.offset
                while self.remaining is None or self.remaining > 0:
                    want = 256 * 1024 if self.remaining is None else min(256 * 1024, self.remaining)
                    buf = source.read(want)
                    if not buf:
                        break
                    if self.remaining is not None:
                        self.remaining -= len(buf)
                    outputfile.write(buf)
                    if image:
                        channel.request_bytes += len(buf)

            def handle(self):
                try:
                    super().handle()
                except (ConnectionError, ssl.SSLError, OSError):
                    pass

        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(self.root)))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(disk / "server.pem", disk / "server.key")
        # The TLS handshake in the connection's own thread, not in accept():
        # a client that never finishes it must not stop the server.
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True,
                                            do_handshake_on_connect=False)
        self.httpd.handle_error = lambda *a: None
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def publish(self, apps_variant=None, os_image=None, os_version=None, delta=True):
        """Release `version + 1`; `delta=False` leaves out the chunk archive
        and the binary patch (the device then downloads the whole image)."""
        self.version += 1
        cmd = [str(target_dir() / "containeros-publish"), "--channel-dir", str(self.dir),
               "--key", str(self.disk / "release.key"), "--version", str(self.version)]
        if apps_variant:
            path = self.root / f"compose-{self.version}.yml"
            path.write_text(compose(apps_variant, app_image(apps_variant), self.version))
            cmd += ["--apps", str(path)]
        if os_image:
            cmd += ["--os-image", str(self.disk / os_image), "--os-version", os_version]
            # Brotli 5: the archive of a 704 MiB slot in half a minute
            # instead of 10 at 11, for under 1 % more bytes.
            cmd += ["--delta-level", "5"] if delta else ["--no-delta", "--no-patch"]
        out = run(cmd, stdout=subprocess.PIPE).stdout.strip()
        log(f"published release {self.version}: {out}")
        return time.monotonic()

    def close(self):
        self.httpd.shutdown()


# ---------------------------------------------------------------- the machine


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Device:
    """One simulated device: a copy-on-write overlay of the factory disk,
    the QEMU process, and the bridges to its bus."""

    def __init__(self, disk, run_dir, channel, name="device"):
        self.disk = disk
        self.dir = run_dir / name
        self.dir.mkdir(parents=True)
        self.channel = channel
        self.overlay = self.dir / "disk.qcow2"
        run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
             str(disk / "disk.raw"), str(self.overlay)])
        self.console = self.dir / "console.log"
        self.bus = self.dir / "bus"
        self.qemu = None
        self.bridge = None
        self.boots = 0
        self.console_offset = 0
        self.ssh_port = None
        # The device's host key, learnt at the first login: every later
        # login (other boots, the other slot) must meet the same key.
        self.known_hosts = self.dir / "known_hosts"

    # -- power

    def power_on(self):
        self.boots += 1
        self.console_offset = self.console.stat().st_size if self.console.exists() else 0
        bus_port = free_port()
        self.ssh_port = free_port()
        forward = f"cmd:socat - TCP:127.0.0.1:{self.channel.port}"
        cmd = ["qemu-system-x86_64", "-accel", "tcg", "-machine", "q35", "-cpu", "max",
               "-smp", os.environ.get("CONTAINEROS_VM_CPUS", "2"), "-m", "1024",
               "-nodefaults", "-display", "none", "-vga", "none",
               "-bios", str(OVMF),
               "-drive", f"file={self.overlay},format=qcow2,if=virtio,cache=writeback",
               "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{bus_port}-:7000,"
                          f"hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22,"
                          f"guestfwd=tcp:10.0.2.100:443-{forward}",
               "-device", "virtio-net-pci,netdev=net0",
               "-device", "virtio-rng-pci",
               "-chardev", f"file,id=serial0,path={self.console},append=on",
               "-serial", "chardev:serial0"]
        self.qemu = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(self.dir / "qemu.err", "a"))
        self.powered_at = time.monotonic()
        if self.bridge:
            self.bridge.kill()
            self.bridge.wait()
        self.bus.unlink(missing_ok=True)
        self.bridge = subprocess.Popen(
            ["socat", f"UNIX-LISTEN:{self.bus},fork,mode=600", f"TCP:127.0.0.1:{bus_port}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        log(f"power on (boot {self.boots}), console: {self.console}")

    def power_cut(self):
        """SIGKILL: what QEMU had not written to the image file is lost."""
        if self.qemu and self.qemu.poll() is None:
            self.qemu.kill()
            self.qemu.wait()
        log("power cut")

    def shutdown(self):
        self.power_cut()
        if self.bridge:
            self.bridge.kill()
            self.bridge.wait()
            self.bridge = None

    # -- the console

    def console_bytes(self):
        try:
            with open(self.console, "rb") as f:
                f.seek(self.console_offset)
                return f.read()
        except FileNotFoundError:
            return b""

    def console_text(self):
        """The console since this boot started."""
        return self.console_bytes().decode("utf-8", "replace")

    def wait_console(self, text, timeout):
        """Waits for `text` on this boot's console; returns when it came."""
        deadline = time.monotonic() + timeout
        needle = text.encode()
        while time.monotonic() < deadline:
            if needle in self.console_bytes():
                return time.monotonic()
            if self.qemu.poll() is not None:
                raise Failure(f"QEMU exited ({self.qemu.returncode}) waiting for {text!r}; "
                              f"see {self.dir / 'qemu.err'} and {self.console}")
            time.sleep(0.5)
        raise Failure(f"no {text!r} on the console within {timeout} s; see {self.console}")

    def new_boot(self, marker, timeout):
        """Waits for `marker` (the end of a boot: the kernel restarting, a
        panic) and makes the console after it the next boot's."""
        self.wait_console(marker, timeout)
        data = self.console_bytes()
        self.console_offset += data.index(marker.encode()) + len(marker)
        self.powered_at = time.monotonic()

    def wait_reboot(self, timeout=900):
        """Waits until the guest restarts by itself."""
        self.new_boot("reboot: Restarting system", timeout)
        log("the device restarts")

    def wait_ready(self, timeout=900):
        """Waits for the agent's READY=1 (systemd prints the unit started);
        returns the seconds since power-on (or the guest's own restart)."""
        at = self.wait_console(READY_LINE, timeout)
        ready = at - self.powered_at
        log(f"agent ready {ready:.1f} s after power-on")
        return ready

    # -- the agent, through the real CLI

    def cli(self, *args, check=True):
        env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=f"unix:path={self.bus}")
        p = subprocess.run([str(target_dir() / "containeros"), *args], env=env, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
        if check and p.returncode != 0:
            raise Failure(f"containeros {' '.join(args)}: {p.stderr.strip()}")
        return p

    def ssh(self, command, check=True, key=True):
        """Runs `command` on the device as root over SSH with the
        provisioned key (`key=False`: password only, which must fail)."""
        auth = (["-i", str(self.disk / "ssh.key"), "-o", "IdentitiesOnly=yes"] if key else
                ["-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password,keyboard-interactive"])
        p = subprocess.run(
            ["ssh", "-p", str(self.ssh_port), "-o", "BatchMode=yes", "-o", "ConnectTimeout=30",
             "-o", "StrictHostKeyChecking=accept-new", "-o", f"UserKnownHostsFile={self.known_hosts}",
             "-o", "LogLevel=ERROR", *auth, "root@127.0.0.1", command],
            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
        if check and p.returncode != 0:
            raise Failure(f"ssh {command!r}: exit {p.returncode}: {p.stderr.strip()}")
        return p

    def status(self):
        p = self.cli("status", "--json", check=False)
        try:
            return json.loads(p.stdout) if p.returncode == 0 else None
        except json.JSONDecodeError:
            return None

    def os_status(self):
        p = self.cli("os", "status", "--json", check=False)
        if p.returncode != 0:
            return None
        try:
            return json.loads(p.stdout)
        except json.JSONDecodeError:
            return None

    def app_log(self):
        p = self.cli("apps", "logs", "app", "--lines", "200", check=False)
        return p.stdout if p.returncode == 0 else ""

    def wait_for(self, what, predicate, timeout):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.qemu.poll() is not None:
                raise Failure(f"QEMU exited waiting for {what}")
            last = predicate()
            if last:
                return last
            time.sleep(2)
        raise Failure(f"{what}: not within {timeout} s; see {self.console}")

    def wait_os(self, what, check, timeout=900):
        """Waits until `containeros os status --json` satisfies `check`;
        tolerates the device being down (rebooting) in between."""
        def probe():
            s = self.os_status()
            return s if s and check(s) else None
        s = self.wait_for(what, probe, timeout)
        log(f"{what}: booted {s.get('booted_slot')}, OS {s.get('os_version')}, state {s.get('state')}")
        return s

    def wait_app(self, variant, timeout=600):
        def probe():
            text = self.app_log()
            lines = [l for l in text.splitlines() if l.startswith("start ")]
            return lines if lines and lines[-1] == f"start {variant}" else None
        lines = self.wait_for(f"app {variant} running", probe, timeout)
        log(f"app {variant} running; its volume holds: {', '.join(lines)}")
        return lines


# ---------------------------------------------------------------- scenarios
#
# Each phase starts from a device that runs a committed OS with apps, on
# either slot, and leaves it that way. The standalone tests run one phase
# on a fresh device; `vm.py test` runs them all, one after the other, on
# one device through its life (one factory boot instead of five).


def boot_factory(dev):
    dev.power_on()
    ready = dev.wait_ready()
    print(dev.cli("status").stdout, end="", flush=True)
    dev.wait_os("factory state", lambda s: s.get("booted_slot") == "A")
    return ready


def first_release(dev, channel):
    """Release 1: apps v1 on the factory OS (OS 1, the image the device
    runs: nothing to install; the next OS release is published with a
    binary patch from it)."""
    channel.publish(apps_variant="v1", os_image="v1.img", os_version="1", delta=False)
    dev.wait_app("v1")


def other(slot):
    return "B" if slot == "A" else "A"


def phase_provisioning(dev, channel, timings):
    """The provisioning file mkdisk.sh wrote on the boot partition with
    `containeros provision write`: imported on the first boot, applied
    (host name through hostnamed, a static Ethernet profile and a Wi-Fi
    profile through NetworkManager, SSH for the provisioned key only, the
    channel with its CA), the passphrase gone from the boot partition."""
    s = dev.wait_for("provisioning imported", lambda: (lambda s: s if s and str(
        s.get("provisioning", "")).startswith("imported") else None)(dev.status()), 300)
    log(f"provisioning: {s.get('provisioning')}; device id {s.get('device_id')}")
    if "not applied" in str(s.get("provisioning")):
        raise Failure(f"provisioning not applied: {s.get('provisioning')}")
    # SSH: the agent starts it for the provisioned key; key only.
    dev.wait_for("SSH with the provisioned key", lambda: dev.ssh("true", check=False).returncode == 0, 300)
    p = dev.ssh("true", check=False, key=False)
    if p.returncode == 0 or "Permission denied (publickey)" not in p.stderr:
        raise Failure(f"SSH without a key was not refused as keys-only: exit {p.returncode}: {p.stderr.strip()}")
    hostname = dev.ssh("hostname").stdout.strip()
    if hostname != "shop-window-7":
        raise Failure(f"host name {hostname!r}, provisioned 'shop-window-7'")
    eth = dev.wait_for("the static Ethernet profile active", lambda: (lambda out: out if out.startswith(
        "manual") else None)(dev.ssh("nmcli -g ipv4.method,ipv4.addresses,ipv4.gateway,GENERAL.STATE "
                                     "connection show containeros-ethernet", check=False).stdout), 120)
    log(f"Ethernet (NetworkManager, containeros-ethernet): {' '.join(eth.split())}")
    if "activated" not in eth or "10.0.2.15/24" not in eth:
        raise Failure(f"containeros-ethernet is not the active static profile: {eth}")
    wifi = dev.ssh("nmcli -g 802-11-wireless.ssid connection show containeros-wifi-Shop").stdout.strip()
    if wifi != "Shop":
        raise Failure(f"no Wi-Fi profile for Shop: {wifi!r}")
    on_boot = dev.ssh("cat /boot/efi/containeros/config.toml").stdout
    if "correct horse" in on_boot or "# psk: stored on the device" not in on_boot:
        raise Failure(f"the passphrase is still on the boot partition:\n{on_boot}")
    mode = dev.ssh("stat -c %a /data/containeros/provision/config.json").stdout.strip()
    if mode != "600":
        raise Failure(f"the stored provisioning (secrets) has mode {mode}, not 600")
    log("provisioned: host name, static Ethernet, Wi-Fi profile, SSH by key only, passphrase off the boot partition")


def phase_update(dev, channel, timings, image="v2.img", os_version="2"):
    """An OS update to the other slot: download (a binary patch from the
    running OS when the channel's last release is it, else the chunk
    archive with the running slot as seed), reboot, health, commit; the
    next boot stays there."""
    s = dev.os_status()
    start, target = s.get("booted_slot"), other(s.get("booted_slot"))
    variant = f"v{channel.version + 1}"
    published = channel.publish(apps_variant=variant, os_image=image, os_version=os_version)
    dev.wait_reboot(1500)
    timings["publish to reboot (download, verify, switch)"] = time.monotonic() - published
    timings[f"reset to agent ready (trial boot of {target})"] = dev.wait_ready()
    s = dev.wait_os(f"committed on {target}",
                    lambda s: s.get("booted_slot") == target and s.get("state") == "committed")
    timings["publish to committed"] = time.monotonic() - published
    assert s.get("os_version") == os_version, s
    lines = dev.wait_app(variant)
    assert "start v1" in lines, f"the named volume lost the v1 app's lines: {lines}"
    # The next boot stays there.
    dev.cli("os", "reboot", check=False)
    dev.wait_reboot()
    dev.wait_ready()
    dev.wait_os(f"still on {target} after a reboot",
                lambda s: s.get("booted_slot") == target and s.get("state") == "committed")
    dev.wait_app(variant)
    log(f"updated from {start} to {target}")


def publish_broken(dev, channel, image):
    """Publishes OS 3 from a broken `image` with new apps; returns the slot
    and OS version the device runs, its app's start lines, and when."""
    s = dev.os_status()
    before = [x for x in dev.app_log().splitlines() if x.startswith("start ")]
    published = channel.publish(apps_variant=f"v{channel.version + 1}", os_image=image,
                                os_version="3", delta=False)
    return s.get("booted_slot"), s.get("os_version"), before, published


def phase_rollback(dev, channel, timings):
    """A broken OS (engine disabled): health never passes, the device rolls
    back and the previous release's apps run again."""
    home, version, before, published = publish_broken(dev, channel, "v3-noengine.img")
    dev.wait_reboot(1500)
    dev.wait_ready()
    dev.wait_os(f"trying {other(home)}", lambda s: s.get("booted_slot") == other(home))
    dev.wait_reboot(900)
    dev.wait_ready()
    s = dev.wait_os(f"rolled back to {home}",
                    lambda s: s.get("booted_slot") == home and s.get("state") == "rolled-back")
    timings["publish to rolled back (engine disabled in the new OS)"] = time.monotonic() - published
    assert s.get("os_version") == version, s
    # The previous app runs again on this boot: one more line in its volume.
    last = before[-1]
    lines = dev.wait_for(f"the app ({last}) started again", lambda: (
        lambda l: l if l.count(last) > before.count(last) and l[-1] == last else None)(
        [x for x in dev.app_log().splitlines() if x.startswith("start ")]), 600)
    log(f"app running again; its volume holds: {', '.join(lines)}")


def phase_kernel(dev, channel, timings):
    """A new OS whose kernel never comes up: GRUB's try counter brings the
    device back, the agent records the failed update."""
    home, version, before, published = publish_broken(dev, channel, "v3-nokernel.img")
    dev.wait_reboot(1500)
    # update.boot_attempts (3) boots of the new slot, each a kernel panic and a reset.
    for attempt in range(3):
        dev.new_boot("Kernel panic", 600)
        log(f"slot {other(home)} attempt {attempt + 1}: kernel panic")
    dev.wait_ready()
    s = dev.wait_os(f"back on {home}", lambda s: s.get("booted_slot") == home
                    and s.get("state") not in ("pending-reboot", "trying"))
    timings["publish to back on the old slot (new kernel panics)"] = time.monotonic() - published
    log(f"after the failed kernel: state {s.get('state')}, last error: {s.get('last_error')}")
    assert s.get("os_version") == version, s
    assert f"Booting `ContainerOS slot {home}'" in dev.console_text()
    dev.wait_app(before[-1].split()[-1])


def phase_powercut(dev, channel, timings, seed, points):
    """Power cuts at seeded points while the image downloads (by bytes
    served; the release has no chunk archive, so the whole image comes
    over the network) and while the slots are switched (0-1.5 s after the
    agent logged the image verified): after each the device boots, runs on
    a consistent slot, and the app's named volume kept what it wrote; in
    the end the update is committed."""
    rng = random.Random(seed)
    log(f"power cut seed {seed} (CONTAINEROS_VM_SEED={seed} repeats these points)")
    download = sorted(rng.uniform(0.05, 0.95) for _ in range(points - points // 2))
    switch = [round(rng.uniform(0.0, 1.5), 1) for _ in range(points // 2)]
    print("cut points: download at " + ", ".join(f"{f:.0%}" for f in download)
          + "; after 'verified' at " + ", ".join(f"+{t:.1f} s" for t in switch), flush=True)
    images = {"1": "v1.img", "2": "v2.img"}
    s = dev.os_status()
    home = s.get("booted_slot")

    def publish_next(s):
        # Between the two good OS versions, whichever does not run.
        next_os = "1" if s.get("os_version") == "2" else "2"
        channel.publish(apps_variant=f"v{channel.version + 1}", os_image=images[next_os],
                        os_version=next_os, delta=False)

    # Image requests made before the device can have seen this release (or
    # before the last cut): only later ones count.
    before = channel.image_requests
    publish_next(s)
    size = (channel.disk / "v1.img").stat().st_size
    for i, frac in enumerate(download):
        want = int(size * frac)
        dev.wait_for(f"download at {frac:.0%}", lambda: (
            channel.image_requests > before and channel.request_bytes >= want) or None, 1200)
        dev.power_cut()
        before = channel.image_requests
        s = after_cut(dev, f"download cut {i + 1} at {frac:.0%}")
        if s.get("booted_slot") != home:
            raise Failure(f"a cut during the download left the device on {s.get('booted_slot')}: {s}")
    for j, delay in enumerate(switch):
        dev.wait_console(VERIFIED_LINE, 1500)
        time.sleep(delay)
        dev.power_cut()
        s = after_cut(dev, f"switch cut {j + 1} at +{delay:.1f} s")
        s = settle(dev, s)
        if j + 1 < len(switch):
            # The next switch needs the next update.
            publish_next(s)
    dev.wait_app(f"v{channel.version}")


def after_cut(dev, what):
    """Power on after a cut: the device must boot, the agent come up on a
    slot it can name, and the app's volume still hold the first line."""
    dev.power_on()
    dev.wait_ready()
    s = dev.wait_os(f"after {what}", lambda s: s.get("booted_slot") in ("A", "B"), 300)
    lines = dev.wait_for("the app's volume", lambda: [l for l in dev.app_log().splitlines() if l.startswith("start ")], 600)
    if "start v1" not in lines:
        raise Failure(f"after {what}: the named volume lost its first line: {lines}")
    log(f"after {what}: booted {s.get('booted_slot')}, state {s.get('state')}, volume: {len(lines)} lines")
    return s


def settle(dev, s):
    """After a cut during the switch, the update goes on by itself: on to
    the new slot and committed. A pending reboot waits for a person, who
    reboots."""
    deadline = time.monotonic() + 1500
    while time.monotonic() < deadline:
        s = dev.os_status() or s
        if s.get("state") == "committed" and s.get("booted_slot") == s.get("target_slot"):
            log(f"committed on {s.get('booted_slot')} (OS {s.get('os_version')})")
            return s
        if s.get("state") == "pending-reboot":
            log("pending reboot: rebooting it")
            dev.cli("os", "reboot", check=False)
            dev.wait_reboot()
            dev.wait_ready()
        time.sleep(3)
    raise Failure(f"the update did not settle after a cut: {s}")


PHASES = {
    "provision": phase_provisioning,
    "update": phase_update,
    "rollback": phase_rollback,
    "kernel": phase_kernel,
    "powercut": phase_powercut,
}


def run_phase(name, dev, channel, timings):
    if name == "powercut":
        seed = int(os.environ.get("CONTAINEROS_VM_SEED", random.randrange(1 << 32)))
        points = int(os.environ.get("CONTAINEROS_VM_CUTS", "10"))
        phase_powercut(dev, channel, timings, seed, points)
    else:
        PHASES[name](dev, channel, timings)


def test(disk, run_dir, names, timings):
    """The phases `names`, in order, on one device; returns the failed and
    the phases not run after a failure."""
    channel = Channel(disk, run_dir)
    dev = Device(disk, run_dir, channel, "device")
    failed = []
    try:
        timings["power-on to agent ready (factory boot)"] = boot_factory(dev)
        if names and names[0] == "provision":
            run_checked("provision", dev, channel, timings, failed)
            names = names[1:]
        first_release(dev, channel)
        for name in names:
            if failed:
                print(f"NOT RUN: vm: {name} (after a failure)", flush=True)
                failed.append(name)
                continue
            run_checked(name, dev, channel, timings, failed)
    except (Failure, AssertionError, subprocess.CalledProcessError) as e:
        print(f"FAIL: vm: factory boot and first release: {e}", flush=True)
        failed.append("factory")
    finally:
        dev.shutdown()
        channel.close()
    return failed


def run_checked(name, dev, channel, timings, failed):
    log(f"=== {name}")
    t0 = time.monotonic()
    try:
        run_phase(name, dev, channel, timings)
        print(f"PASS: vm: {name} ({time.monotonic() - t0:.0f} s)", flush=True)
    except (Failure, AssertionError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        print(f"FAIL: vm: {name}: {e}", flush=True)
        failed.append(name)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["build", "demo", "test", "shell"])
    ap.add_argument("names", nargs="*")
    ap.add_argument("--keep", action="store_true", help="keep the run directory")
    ap.add_argument("--each", action="store_true",
                    help="test: every phase on a fresh device of its own (slower)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("vm.py: needs root (building the disk image)")
    disk = build()
    if args.command == "build":
        print(disk)
        return
    try:
        urllib.request.urlopen(f"http://{REGISTRY}/v2/", timeout=10).close()
    except OSError as e:
        sys.exit(f"vm.py: the registry on {REGISTRY} does not answer ({e}); start it with "
                 "`bash -c '. scripts/services.sh; ensure_dockerd; ensure_registry'`")
    run_dir = Path(tempfile.mkdtemp(prefix="containeros-vm-"))
    log(f"run directory: {run_dir}")
    timings = {}
    failed = []
    try:
        if args.command == "demo":
            demo(disk, run_dir, timings)
        elif args.command == "shell":
            shell(disk, run_dir)
        else:
            names = args.names or list(PHASES)
            for name in names:
                if name not in PHASES:
                    sys.exit(f"vm.py: no test {name!r}; tests: {', '.join(PHASES)}")
            if args.each:
                for name in names:
                    phases = ["provision"] if name == "provision" else [name]
                    failed += test(disk, run_dir / name, phases, timings)
            else:
                failed = test(disk, run_dir, names, timings)
    finally:
        if timings:
            print("\nTimings (software emulation, no KVM):")
            for k, v in timings.items():
                print(f"  {k:60s} {v:7.1f} s")
        if failed or args.keep:
            log(f"kept {run_dir} (consoles, QEMU errors)")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    if failed:
        sys.exit(1)


def demo(disk, run_dir, timings):
    channel = Channel(disk, run_dir)
    dev = Device(disk, run_dir, channel, "demo")
    try:
        timings["power-on to agent ready"] = boot_factory(dev)
        phase_provisioning(dev, channel, timings)
        first_release(dev, channel)
        print(dev.cli("os", "status").stdout, flush=True)
        published = channel.publish(apps_variant="v2", os_image="v2.img", os_version="2")
        log("release 2 published (OS 2 + apps v2); the device polls the channel every 10 s")
        dev.wait_reboot(1200)
        timings["publish to reboot into B"] = time.monotonic() - published
        timings["reset to agent ready on B"] = dev.wait_ready()
        dev.wait_os("committed on B", lambda s: s.get("booted_slot") == "B" and s.get("state") == "committed")
        timings["publish to committed"] = time.monotonic() - published
        print(dev.cli("status").stdout + dev.cli("os", "status").stdout, flush=True)
        dev.wait_app("v2")
    finally:
        dev.shutdown()
        channel.close()


def shell(disk, run_dir):
    channel = Channel(disk, run_dir)
    dev = Device(disk, run_dir, channel, "shell")
    dev.power_on()
    dev.wait_ready()
    print(f"\nThe device runs. From another terminal:\n"
          f"  DBUS_SYSTEM_BUS_ADDRESS=unix:path={dev.bus} {target_dir() / 'containeros'} status\n"
          f"  tail -f {dev.console}\n"
          f"Channel directory (publish into it): {channel.dir}\nCtrl-C stops the device.", flush=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    dev.shutdown()
    channel.close()


if __name__ == "__main__":
    main()
