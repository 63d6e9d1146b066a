#!/usr/bin/env python3
"""The simulated device: a QEMU x86-64 machine booting the A/B disk that
tests/vm/mkdisk.sh assembles, driven from the host.

    tests/vm/vm.py build                 build (or reuse) the disk; print its directory
    tests/vm/vm.py demo                  boot, publish an update, watch it commit
    tests/vm/vm.py test [NAME...]        the system tests (all by default):
                                         update, rollback, kernel, powercut
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


def compose(variant, image):
    # The app appends one line per start to a file in its named volume and
    # prints the whole file: its logs show what survived.
    return f"""name: demo
x-containeros:
  version: "{variant.lstrip('v')}"
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
    """A channel directory served over HTTPS on a loopback port; counts the
    bytes of the OS image served so far (for power cuts)."""

    def __init__(self, disk, run_dir):
        self.disk = disk
        self.root = run_dir / "www"
        self.dir = self.root / "stable"
        self.dir.mkdir(parents=True)
        self.version = 0
        self.image_bytes = 0
        self.image_requests = 0
        self.request_bytes = 0
        channel = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            # A connection the guest's power cut left half-open ends here.
            timeout = 120

            def log_message(self, *args):
                pass

            def copyfile(self, source, outputfile):
                image = self.path.endswith(".img")
                if image:
                    channel.image_requests += 1
                    channel.request_bytes = 0
                while True:
                    buf = source.read(256 * 1024)
                    if not buf:
                        break
                    outputfile.write(buf)
                    if image:
                        channel.image_bytes += len(buf)
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

    def publish(self, apps_variant=None, os_image=None, os_version=None):
        self.version += 1
        cmd = [str(target_dir() / "containeros-publish"), "--channel-dir", str(self.dir),
               "--key", str(self.disk / "release.key"), "--version", str(self.version)]
        if apps_variant:
            path = self.root / f"compose-{self.version}.yml"
            path.write_text(compose(apps_variant, app_image(apps_variant)))
            cmd += ["--apps", str(path)]
        if os_image:
            cmd += ["--os-image", str(self.disk / os_image), "--os-version", os_version]
        out = run(cmd, stdout=subprocess.PIPE).stdout.strip()
        log(f"published release {self.version}: {out}")
        self.image_bytes = 0
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

    # -- power

    def power_on(self):
        self.boots += 1
        self.console_offset = self.console.stat().st_size if self.console.exists() else 0
        bus_port = free_port()
        forward = f"cmd:socat - TCP:127.0.0.1:{self.channel.port}"
        cmd = ["qemu-system-x86_64", "-accel", "tcg", "-machine", "q35", "-cpu", "max",
               "-smp", os.environ.get("CONTAINEROS_VM_CPUS", "2"), "-m", "1024",
               "-nodefaults", "-display", "none", "-vga", "none",
               "-bios", str(OVMF),
               "-drive", f"file={self.overlay},format=qcow2,if=virtio,cache=writeback",
               "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{bus_port}-:7000,"
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


def boot_factory(dev):
    dev.power_on()
    ready = dev.wait_ready()
    print(dev.cli("status").stdout, end="", flush=True)
    dev.wait_os("factory state", lambda s: s.get("booted_slot") == "A")
    return ready


def first_release(dev, channel):
    """Release 1: apps v1 on the factory OS."""
    channel.publish(apps_variant="v1")
    dev.wait_app("v1")


def update(dev, channel, image="v2.img", apps="v2"):
    """Publishes release 2 (OS 2 from `image`, apps `apps`); returns when."""
    return channel.publish(apps_variant=apps, os_image=image, os_version="2")


def test_update(disk, run_dir, timings):
    """A to B: download, reboot into B, health, commit; the next boot stays on B."""
    channel = Channel(disk, run_dir)
    dev = Device(disk, run_dir, channel, "update")
    try:
        timings["power-on to agent ready (factory boot)"] = boot_factory(dev)
        first_release(dev, channel)
        published = update(dev, channel)
        dev.wait_reboot(1500)
        timings["publish to reboot (download, verify, switch)"] = time.monotonic() - published
        timings["reset to agent ready (trial boot of B)"] = dev.wait_ready()
        s = dev.wait_os("committed on B", lambda s: s.get("booted_slot") == "B" and s.get("state") == "committed")
        timings["publish to committed"] = time.monotonic() - published
        assert s.get("os_version") == "2", s
        lines = dev.wait_app("v2")
        assert "start v1" in lines, f"the named volume lost the v1 app's lines: {lines}"
        # The next boot stays on B.
        dev.cli("os", "reboot", check=False)
        dev.wait_reboot()
        dev.wait_ready()
        dev.wait_os("still on B after a reboot", lambda s: s.get("booted_slot") == "B" and s.get("state") == "committed")
        dev.wait_app("v2")
    finally:
        dev.shutdown()
        channel.close()


def test_rollback(disk, run_dir, timings):
    """A broken v2 (engine disabled): health never passes, the device rolls
    back to A and the v1 apps run again."""
    channel = Channel(disk, run_dir)
    dev = Device(disk, run_dir, channel, "rollback")
    try:
        boot_factory(dev)
        first_release(dev, channel)
        published = update(dev, channel, image="v2-noengine.img")
        dev.wait_reboot(1500)
        dev.wait_ready()
        dev.wait_os("trying B", lambda s: s.get("booted_slot") == "B")
        dev.wait_reboot(900)
        dev.wait_ready()
        s = dev.wait_os("rolled back to A", lambda s: s.get("booted_slot") == "A" and s.get("state") == "rolled-back")
        timings["publish to rolled back (engine disabled in v2)"] = time.monotonic() - published
        assert s.get("os_version") == "1", s
        # The v1 app runs again on this boot: a second line in its volume.
        lines = dev.wait_for("the v1 app started again", lambda: (
            lambda l: l if l.count("start v1") >= 2 and l[-1] == "start v1" else None)(
            [x for x in dev.app_log().splitlines() if x.startswith("start ")]), 600)
        log(f"app v1 running again; its volume holds: {', '.join(lines)}")
    finally:
        dev.shutdown()
        channel.close()


def test_kernel(disk, run_dir, timings):
    """A v2 kernel that never comes up: GRUB's try counter brings the device
    back to A, the agent records the failed update."""
    channel = Channel(disk, run_dir)
    dev = Device(disk, run_dir, channel, "kernel")
    try:
        boot_factory(dev)
        first_release(dev, channel)
        published = update(dev, channel, image="v2-nokernel.img")
        dev.wait_reboot(1500)
        # update.boot_attempts (3) boots of B, each a kernel panic and a reset.
        for attempt in range(3):
            dev.new_boot("Kernel panic", 600)
            log(f"slot B attempt {attempt + 1}: kernel panic")
        dev.wait_ready()
        s = dev.wait_os("back on A", lambda s: s.get("booted_slot") == "A" and s.get("state") not in ("pending-reboot", "trying"))
        timings["publish to back on A (v2 kernel panics)"] = time.monotonic() - published
        log(f"after the failed kernel: state {s.get('state')}, last error: {s.get('last_error')}")
        assert s.get("os_version") == "1", s
        assert "Booting `ContainerOS slot A'" in dev.console_text()
        dev.wait_app("v1")
    finally:
        dev.shutdown()
        channel.close()


def test_powercut(disk, run_dir, timings, seed, points):
    """Power cuts at seeded points while the image downloads (by bytes
    served) and while the slots are switched (0-1.5 s after the agent
    logged the image verified): after each the device boots, runs on a
    consistent slot, and the app's named volume kept what it wrote; in the
    end the update is committed."""
    rng = random.Random(seed)
    log(f"power cut seed {seed} (CONTAINEROS_VM_SEED={seed} repeats these points)")
    download = sorted(rng.uniform(0.05, 0.95) for _ in range(points - points // 2))
    switch = [round(rng.uniform(0.0, 1.5), 1) for _ in range(points // 2)]
    print("cut points: download at " + ", ".join(f"{f:.0%}" for f in download)
          + "; after 'verified' at " + ", ".join(f"+{t:.1f} s" for t in switch), flush=True)
    channel = Channel(disk, run_dir)
    dev = Device(disk, run_dir, channel, "powercut")
    images = {"1": "v1.img", "2": "v2.img"}
    try:
        boot_factory(dev)
        first_release(dev, channel)
        size = (disk / "v2.img").stat().st_size
        channel.publish(apps_variant="v2", os_image="v2.img", os_version="2")
        for i, frac in enumerate(download):
            want = int(size * frac)
            channel.request_bytes = 0
            dev.wait_for(f"download at {frac:.0%}", lambda: channel.request_bytes >= want or None, 1200)
            dev.power_cut()
            s = after_cut(dev, f"download cut {i + 1} at {frac:.0%}")
            if s.get("booted_slot") != "A":
                raise Failure(f"a cut during the download left the device on {s.get('booted_slot')}: {s}")
        for j, delay in enumerate(switch):
            dev.wait_console(VERIFIED_LINE, 1500)
            time.sleep(delay)
            dev.power_cut()
            s = after_cut(dev, f"switch cut {j + 1} at +{delay:.1f} s")
            s = settle(dev, s)
            if j + 1 < len(switch):
                # The next switch needs the next update: back to the other OS.
                other = "1" if s.get("os_version") == "2" else "2"
                channel.publish(apps_variant=f"v{other}", os_image=images[other], os_version=other)
        lines = dev.wait_app(f"v{s.get('os_version')}")
        assert "start v1" in lines, lines
    finally:
        dev.shutdown()
        channel.close()


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


TESTS = {
    "update": test_update,
    "rollback": test_rollback,
    "kernel": test_kernel,
    "powercut": test_powercut,
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["build", "demo", "test", "shell"])
    ap.add_argument("names", nargs="*")
    ap.add_argument("--keep", action="store_true", help="keep the run directory")
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
            names = args.names or list(TESTS)
            for name in names:
                if name not in TESTS:
                    sys.exit(f"vm.py: no test {name!r}; tests: {', '.join(TESTS)}")
            for name in names:
                log(f"=== {name}")
                t0 = time.monotonic()
                try:
                    if name == "powercut":
                        seed = int(os.environ.get("CONTAINEROS_VM_SEED", random.randrange(1 << 32)))
                        points = int(os.environ.get("CONTAINEROS_VM_CUTS", "10"))
                        TESTS[name](disk, run_dir, timings, seed, points)
                    else:
                        TESTS[name](disk, run_dir, timings)
                    print(f"PASS: vm: {name} ({time.monotonic() - t0:.0f} s)", flush=True)
                except (Failure, AssertionError, subprocess.CalledProcessError) as e:
                    print(f"FAIL: vm: {name}: {e}", flush=True)
                    failed.append(name)
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
        first_release(dev, channel)
        print(dev.cli("os", "status").stdout, flush=True)
        published = update(dev, channel)
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
