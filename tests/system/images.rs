//! The test-image fixture itself: busybox images built here, pushed to the
//! local registry, and pulled back by digest, on the machine's dockerd
//! (`/run/docker.sock`) and registry (`127.0.0.1:5000`), which `.ci/run`
//! starts. Each test uses its own image names, as tests run in parallel.
//! Containers run with `--network=none`: they need no network, and the
//! shared engine's default bridge is not always there.

use std::process::{Command, Output};
use std::time::Instant;

use containeros_tests::{
    ImageSpec, TestImage, build_busybox_image, busybox_image, layer_bytes, registry_available,
    registry_tag_digest, remove_local, require_image_services, require_root,
};

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("run the docker CLI")
}

/// `docker args…`, asserted to succeed; its trimmed stdout.
fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn setup() {
    require_root();
    require_image_services();
    assert!(registry_available());
}

fn is_digest(d: &str) -> bool {
    d.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[test]
fn variants_differ_and_rebuilds_are_identical() {
    setup();
    let started = Instant::now();
    let one = busybox_image("images-digest", "one");
    eprintln!("first build + push: {:?}", started.elapsed());
    let two = busybox_image("images-digest", "two");
    assert_eq!(one.repository, "127.0.0.1:5000/containeros-test/images-digest");
    assert_eq!(one.tag, "one");
    assert!(is_digest(&one.digest), "{one:?}");
    assert_eq!(
        one.by_digest(),
        format!("127.0.0.1:5000/containeros-test/images-digest@{}", one.digest)
    );
    assert_eq!(one.by_tag(), "127.0.0.1:5000/containeros-test/images-digest:one");
    assert_ne!(one.digest, two.digest, "two variants must be two images");

    // Cached: the same spec is not built again in this process.
    assert_eq!(busybox_image("images-digest", "one"), one);

    // Built again from scratch, after the local copy is gone: same digest.
    remove_local(&one);
    let started = Instant::now();
    let again = build_busybox_image("images-digest", "one");
    eprintln!("uncached rebuild + push: {:?}", started.elapsed());
    assert_eq!(again, one, "the same spec must give the same digest");

    // The digest is the registry's own for the tag.
    assert_eq!(registry_tag_digest(&one).as_deref(), Some(one.digest.as_str()));
    assert_eq!(registry_tag_digest(&two).as_deref(), Some(two.digest.as_str()));
}

#[test]
fn removed_image_is_pulled_back_by_digest_from_the_registry() {
    setup();
    let image = busybox_image("images-pull", "v1");
    remove_local(&image);
    assert!(
        !docker(&["image", "inspect", &image.by_digest()]).status.success(),
        "still present after remove_local"
    );
    remove_local(&image); // nothing left to remove: not an error

    let pulled = docker_ok(&["pull", &image.by_digest()]);
    assert!(
        pulled.contains("Pull complete") && pulled.contains(&image.digest),
        "not a real pull of {}:\n{pulled}",
        image.by_digest()
    );
    assert_eq!(
        docker_ok(&[
            "run",
            "--rm",
            "--network=none",
            &image.by_digest(),
            "cat",
            "/variant"
        ]),
        "v1"
    );
    assert_eq!(
        docker_ok(&[
            "run",
            "--rm",
            "--network=none",
            &image.by_digest(),
            "cat",
            "/etc/containeros-test-image"
        ]),
        "containeros-test/images-pull:v1"
    );
    assert_eq!(
        docker_ok(&[
            "run",
            "--rm",
            "--network=none",
            "--user",
            "nobody",
            &image.by_digest(),
            "id"
        ]),
        "uid=65534(nobody) gid=65534(nobody) groups=65534(nobody)"
    );

    let bytes = layer_bytes(&image);
    eprintln!("layer bytes of {}: {bytes}", image.by_digest());
    assert!(bytes > 0);
    remove_local(&image);
}

/// Removes the container when the test ends, passed or not.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "--force", &self.0]);
    }
}

#[test]
fn default_command_stays_up_and_exits_cleanly_on_stop() {
    setup();
    let image = busybox_image("images-cmd", "v1");
    let id = docker_ok(&["run", "--detach", "--network=none", &image.by_digest()]);
    let container = Container(id);
    assert_eq!(
        docker_ok(&["inspect", "--format", "{{.State.Running}}", &container.0]),
        "true"
    );
    // Exit code 0, not 137: the shell handled SIGTERM rather than being
    // killed at the end of the timeout.
    docker_ok(&["stop", "--time", "60", &container.0]);
    assert_eq!(
        docker_ok(&["inspect", "--format", "{{.State.ExitCode}}", &container.0]),
        "0"
    );
}

#[test]
fn spec_sets_config_files_and_size() {
    setup();
    let image: TestImage = ImageSpec::new("images-spec", "v1")
        .env("GREETING", "hi")
        .file("/etc/app/message", 0o600, "hello\n")
        .shell("echo $GREETING; cat /etc/app/message; pwd; id -un")
        .workdir("/tmp")
        .user("nobody")
        .label("purpose", "test")
        .expose("80/tcp")
        .healthcheck("test -e /variant", std::time::Duration::from_secs(2))
        .filler(2_000_000)
        .get();
    // As root: the message is 0600 root-owned.
    assert_eq!(
        docker_ok(&[
            "run",
            "--rm",
            "--network=none",
            "--user",
            "root",
            &image.by_digest()
        ]),
        "hi\nhello\n/tmp\nroot"
    );
    let config = docker_ok(&[
        "image",
        "inspect",
        "--format",
        "{{json .Config}}",
        &image.by_digest(),
    ]);
    let config: serde_json::Value = serde_json::from_str(&config).expect("config JSON");
    assert_eq!(config["User"], "nobody");
    assert_eq!(config["Labels"]["purpose"], "test");
    assert_eq!(config["Healthcheck"]["Test"][0], "CMD-SHELL");
    assert!(config["ExposedPorts"]["80/tcp"].is_object(), "{config}");
    assert!(
        layer_bytes(&image) > 2_000_000,
        "filler must be incompressible: {}",
        layer_bytes(&image)
    );
    assert_ne!(image, busybox_image("images-spec", "v2"));
}

#[test]
#[should_panic(expected = "two different test images named")]
fn one_tag_cannot_name_two_specs() {
    setup();
    busybox_image("images-clash", "v1");
    ImageSpec::new("images-clash", "v1").env("X", "1").get();
}
