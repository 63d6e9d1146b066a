use std::sync::{Arc, Mutex};

use super::*;

fn policy() -> Policy {
    Policy {
        check_interval: Duration::from_secs(10),
        failures_before_restart: 3,
        restart_backoff: Duration::from_secs(5),
        restart_backoff_max: Duration::from_secs(60),
        max_restarts: 3,
        recover_store: false,
    }
}

fn info() -> EngineInfo {
    EngineInfo {
        name: "Engine".into(),
        version: "20.10.24".into(),
        api_version: "1.41".into(),
    }
}

#[test]
fn backoff_doubles_up_to_the_cap() {
    let p = policy();
    let got: Vec<u64> = (1..=7).map(|n| p.backoff_after(n).as_secs()).collect();
    assert_eq!(got, [5, 10, 20, 40, 60, 60, 60]);
    assert_eq!(p.backoff_after(200), Duration::from_secs(60));
}

/// Drives a supervisor through rows of (time in seconds, ping ok, expected
/// decision, expected state); a restart or recovery it asks for fails.
fn run_table(policy: Policy, rows: &[(u64, bool, Decision, EngineState)]) -> Supervisor {
    let start = Instant::now();
    let mut s = Supervisor::new(policy, true);
    for (i, (at, ok, decision, state)) in rows.iter().enumerate() {
        let now = start + Duration::from_secs(*at);
        let got = if *ok {
            s.ping_ok(info());
            Decision::Nothing
        } else {
            let d = s.ping_failed("connection refused".into(), now);
            if d != Decision::Nothing {
                s.restart_failed("still down".into());
                s.status.state = EngineState::Restarting;
            }
            d
        };
        assert_eq!((got, s.status().state), (*decision, *state), "row {i} at {at}s");
    }
    s
}

/// One row: a ping outcome at a time (seconds), and the expected decision
/// and state after it.
#[test]
fn policy_table() {
    use Decision::*;
    use EngineState::*;
    let rows: &[(u64, bool, Decision, EngineState)] = &[
        (0, true, Nothing, Up),
        (10, false, Nothing, Up),
        (20, false, Nothing, Up),
        (30, false, Restart { attempt: 1 }, Restarting),
        // the restart did not help: backoff 5 s, next restart allowed at 35
        (34, false, Nothing, Down),
        (36, false, Restart { attempt: 2 }, Restarting),
        // backoff 10 s: allowed from 46
        (40, false, Nothing, Down),
        (46, false, Restart { attempt: 3 }, Restarting),
        // max_restarts (3) reached: give up
        (100, false, Nothing, Failed),
        (200, false, Nothing, Failed),
        // the engine comes back by itself: everything resets
        (210, true, Nothing, Up),
        (220, false, Nothing, Up),
        (230, false, Nothing, Up),
        (240, false, Restart { attempt: 1 }, Restarting),
    ];
    let s = run_table(policy(), rows);
    assert_eq!(s.status().restarts, 4);
}

#[test]
fn without_a_unit_it_only_reports() {
    let mut s = Supervisor::new(policy(), false);
    let now = Instant::now();
    assert_eq!(s.ping_failed("refused".into(), now), Decision::Nothing);
    assert_eq!(s.status().state, EngineState::Down, "never seen up: down at once");
    for _ in 0..5 {
        assert_eq!(s.ping_failed("refused".into(), now), Decision::Nothing);
    }
    assert_eq!(s.status().state, EngineState::Down);
    assert!(
        s.status().last_error.contains("engine did not answer 6 pings"),
        "{}",
        s.status().last_error
    );
}

#[test]
fn a_requested_restart_rearms_after_giving_up() {
    let mut s = Supervisor::new(policy(), true);
    let now = Instant::now();
    for i in 0..20 {
        let _ = s.ping_failed("refused".into(), now + Duration::from_secs(i * 100));
    }
    assert_eq!(s.status().state, EngineState::Failed);
    assert_eq!(s.restart_requested(now), Decision::Restart { attempt: 1 });
    assert!(s.status().last_error.contains("restart requested"));
}

#[test]
fn store_recovery_comes_once_per_outage_after_the_restarts() {
    use Decision::*;
    use EngineState::*;
    let policy = Policy {
        recover_store: true,
        ..policy()
    };
    let rows: &[(u64, bool, Decision, EngineState)] = &[
        (0, true, Nothing, Up),
        (10, false, Nothing, Up),
        (20, false, Nothing, Up),
        (30, false, Restart { attempt: 1 }, Restarting),
        (36, false, Restart { attempt: 2 }, Restarting),
        (46, false, Restart { attempt: 3 }, Restarting),
        // still inside the last backoff (20 s from 46)
        (60, false, Nothing, Down),
        // restarts used up: one recovery of the store
        (70, false, RecoverStore, Restarting),
        // it did not help either: give up
        (80, false, Nothing, Failed),
        (90, false, Nothing, Failed),
        // up again: a later outage may recover again
        (100, true, Nothing, Up),
        (110, false, Nothing, Up),
        (120, false, Nothing, Up),
        (130, false, Restart { attempt: 1 }, Restarting),
        (140, false, Restart { attempt: 2 }, Restarting),
        (160, false, Restart { attempt: 3 }, Restarting),
        (200, false, RecoverStore, Restarting),
    ];
    let s = run_table(policy, rows);
    assert!(s.status().last_error.contains("still down"));
}

#[derive(Clone, Default)]
struct Fake {
    /// The engine is up unless this is false.
    up: Arc<Mutex<bool>>,
    restarts: Arc<Mutex<u32>>,
    /// Restarting brings it back.
    restart_heals: bool,
}

impl Probe for Fake {
    async fn probe(&mut self) -> Result<EngineInfo, String> {
        if *self.up.lock().expect("lock") {
            Ok(info())
        } else {
            Err("refused".into())
        }
    }
}

impl Restarter for Fake {
    fn target(&self) -> &str {
        "docker.service"
    }
    async fn restart(&self) -> Result<(), String> {
        *self.restarts.lock().expect("lock") += 1;
        if self.restart_heals {
            *self.up.lock().expect("lock") = true;
        }
        Ok(())
    }
    async fn recover_store(&self) -> Result<String, String> {
        *self.up.lock().expect("lock") = true;
        Ok("moved aside".into())
    }
}

#[tokio::test(start_paused = true)]
async fn driver_restarts_a_dead_engine_and_reports_it() {
    let fake = Fake {
        restart_heals: true,
        ..Fake::default()
    };
    *fake.up.lock().expect("lock") = true;
    let (tx, mut rx) = watch::channel(EngineStatus::default());
    let (_req_tx, req_rx) = mpsc::channel(1);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(supervise(
        fake.clone(),
        Some(fake.clone()),
        policy(),
        tx,
        req_rx,
        async {
            let _ = stop_rx.await;
        },
    ));

    rx.wait_for(|s| s.state == EngineState::Up).await.expect("up");
    *fake.up.lock().expect("lock") = false;
    // `Restarting` is published too, but a watch keeps only the newest value
    // and the fake restart is instant, so wait for its lasting effect.
    let status = rx
        .wait_for(|s| s.state == EngineState::Up && s.restarts == 1)
        .await
        .expect("up again")
        .clone();
    assert!(status.last_error.is_empty(), "{status:?}");
    assert_eq!(*fake.restarts.lock().expect("lock"), 1);
    let _ = stop_tx.send(());
    task.await.expect("stops");
}

#[tokio::test(start_paused = true)]
async fn driver_gives_up_after_max_restarts_and_answers_requests() {
    let fake = Fake::default();
    let (tx, mut rx) = watch::channel(EngineStatus::default());
    let (req_tx, req_rx) = mpsc::channel(1);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(supervise(
        fake.clone(),
        Some(fake.clone()),
        policy(),
        tx,
        req_rx,
        async {
            let _ = stop_rx.await;
        },
    ));
    rx.wait_for(|s| s.state == EngineState::Failed)
        .await
        .expect("failed");
    assert_eq!(*fake.restarts.lock().expect("lock"), 3);

    let (reply_tx, reply_rx) = oneshot::channel();
    req_tx.send(reply_tx).await.expect("send");
    assert_eq!(reply_rx.await.expect("answered"), Ok(()));
    assert_eq!(*fake.restarts.lock().expect("lock"), 4);
    let _ = stop_tx.send(());
    task.await.expect("stops");
}
