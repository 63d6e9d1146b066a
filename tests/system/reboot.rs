//! Asking for a reboot: through logind with the reboot argument (Raspberry
//! Pi tryboot's), as `systemctl reboot ARG` does; through systemd's
//! `reboot.target`, with the argument in the reboot-param file, on an image
//! without logind; and never around logind when logind refuses.

use containeros_systemd::{RebootBy, RebootError};
use containeros_tests::{Bus, Logind, UnitManager, require_root};

struct Setup {
    bus: Bus,
    units: UnitManager,
    connection: zbus::Connection,
    client: containeros_systemd::UnitManager,
    dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    require_root();
    let bus = Bus::start();
    let units = UnitManager::start(&bus, &[]).await;
    let connection = bus.connect().await;
    let client = containeros_systemd::UnitManager::new(&connection)
        .await
        .expect("unit manager client");
    let dir = tempfile::tempdir().expect("tempdir");
    Setup {
        bus,
        units,
        connection,
        client,
        dir,
    }
}

impl Setup {
    async fn reboot(&self, argument: Option<&str>) -> Result<RebootBy, RebootError> {
        containeros_systemd::reboot(&self.connection, &self.client, argument, &self.param_file()).await
    }

    fn param_file(&self) -> std::path::PathBuf {
        self.dir.path().join("reboot-param")
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reboot_goes_through_logind_with_its_argument() {
    let s = setup().await;
    let logind = Logind::start(&s.bus).await;
    let by = s.reboot(Some("0 tryboot")).await.expect("reboot");
    assert_eq!(by, RebootBy::Logind);
    assert_eq!(
        logind.calls(),
        ["SetRebootParameter 0 tryboot", "Reboot interactive=false"],
        "the argument first, then a reboot no one is asked to confirm"
    );
    assert_eq!(s.units.reboots(), 0, "not around logind");
    assert!(!s.param_file().exists(), "logind writes the argument itself");

    let by = s.reboot(None).await.expect("reboot");
    assert_eq!(by, RebootBy::Logind);
    assert_eq!(logind.calls().len(), 3, "{:?}", logind.calls());
}

#[tokio::test(flavor = "multi_thread")]
async fn without_logind_a_reboot_goes_to_systemd_with_the_argument_in_the_file() {
    let s = setup().await;
    let by = s.reboot(Some("0 tryboot")).await.expect("reboot");
    assert_eq!(by, RebootBy::Systemd);
    assert_eq!(s.units.reboots(), 1, "reboot.target started");
    assert_eq!(
        std::fs::read_to_string(s.param_file()).expect("reboot-param"),
        "0 tryboot"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reboot_logind_refuses_fails_and_is_not_taken_around_it() {
    let s = setup().await;
    let logind = Logind::refusing(&s.bus).await;
    let err = s.reboot(Some("0 tryboot")).await.expect_err("refused");
    assert!(
        matches!(err, RebootError::Parameter { .. }),
        "the argument was refused: {err}"
    );
    assert!(err.to_string().contains("0 tryboot"), "{err}");
    let err = s.reboot(None).await.expect_err("refused");
    assert!(matches!(err, RebootError::Logind(_)), "{err}");
    assert_eq!(s.units.reboots(), 0, "no reboot behind logind's back");
    assert!(!s.param_file().exists());
    assert_eq!(logind.calls().len(), 2);
}
