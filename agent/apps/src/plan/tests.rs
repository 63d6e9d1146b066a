//! Tables of (observed, target) → steps, and a simulated engine that applies
//! steps, to prove that re-planning after any prefix of a plan converges.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration as StdDuration, SystemTime};

use super::*;
use crate::release::{Mode, parse};

const T0: SystemTime = SystemTime::UNIX_EPOCH;

fn at(secs: u64) -> SystemTime {
    T0 + StdDuration::from_secs(secs)
}

fn release(text: &str) -> Release {
    let text = format!("name: app\nx-containeros:\n  version: \"1\"\n{text}");
    parse(&text, "test.yml", Mode::Development).unwrap_or_else(|e| panic!("{e}"))
}

/// db (healthcheck) ← api (service_healthy) ← web (service_started).
fn three(web_image: &str, api_strategy: &str) -> Release {
    release(&format!(
        "services:
  db:
    image: db:1
    volumes: [data:/var/lib/db]
    healthcheck: {{test: [CMD, check], interval: 1s}}
    x-containeros: {{update_strategy: kill-then-download}}
  api:
    image: api:1
    depends_on:
      db: {{condition: service_healthy}}
    x-containeros: {{update_strategy: {api_strategy}}}
  web:
    image: {web_image}
    ports: [\"80:80\"]
    stop_grace_period: 3s
    stop_signal: SIGINT
    depends_on: [api]
volumes:
  data:
"
    ))
}

fn no_locks() -> UpdateLocks {
    UpdateLocks {
        held: BTreeMap::new(),
        default_timeout: StdDuration::from_secs(600),
    }
}

/// A simulated engine: applies steps as the executor would, checking the
/// engine's own rules (unique names, no removal of a running container).
struct Engine<'r> {
    target: &'r Release,
    observed: Observed,
}

/// Container IDs unique across every simulated engine of the test run, as
/// the engine's are.
static NEXT_ID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(100);

impl<'r> Engine<'r> {
    fn new(target: &'r Release, observed: Observed) -> Self {
        Engine { target, observed }
    }

    fn find(&mut self, container: &str) -> &mut ObservedContainer {
        self.observed
            .containers
            .iter_mut()
            .find(|c| c.id == container || c.name == container)
            .unwrap_or_else(|| panic!("no container {container}"))
    }

    fn apply(&mut self, step: &Step) {
        match step {
            Step::PullImage { image } => {
                self.observed.images.insert(image.to_string());
                if let Some(d) = image.by_digest() {
                    self.observed.images.insert(d);
                }
            }
            Step::CreateNetwork { name } => {
                assert!(
                    !self.observed.networks.iter().any(|n| &n.name == name),
                    "network {name} exists"
                );
                self.observed.networks.push(ObservedNetwork {
                    name: name.clone(),
                    release: Some(self.target.name.clone()),
                });
            }
            Step::CreateVolume { name } => {
                assert!(self.observed.volumes.insert(name.clone()), "volume {name} exists");
            }
            Step::CreateContainer {
                service,
                name,
                config_hash,
            } => {
                assert!(
                    !self.observed.containers.iter().any(|c| &c.name == name),
                    "the engine refuses a second container named {name}"
                );
                let s = &self.target.services[service];
                assert!(
                    image_present(&s.image, &self.observed.images),
                    "{service}: image not pulled"
                );
                let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.observed.containers.push(ObservedContainer {
                    id: format!("id{id}"),
                    name: name.clone(),
                    labels: container_labels(self.target, service, config_hash),
                    state: ContainerState::Created,
                    health: Health::None,
                    exit_code: None,
                });
            }
            Step::StartContainer { service, container } => {
                // A one-shot (migration) runs to completion at once here.
                let one_shot = self
                    .target
                    .services
                    .values()
                    .any(|s| s.depends_on.get(service) == Some(&Condition::ServiceCompletedSuccessfully));
                let healthy = self
                    .target
                    .services
                    .get(service)
                    .is_some_and(|s| s.healthcheck.is_some());
                let c = self.find(container);
                if one_shot {
                    c.state = ContainerState::Exited;
                    c.exit_code = Some(0);
                } else {
                    c.state = ContainerState::Running;
                    c.health = if healthy { Health::Healthy } else { Health::None };
                }
            }
            Step::WaitStarted { container, .. } => {
                let c = self.find(container);
                assert_eq!(
                    c.state,
                    ContainerState::Running,
                    "waiting on {container} that was not started"
                );
            }
            Step::WaitHealthy { container, .. } => {
                let c = self.find(container);
                assert_eq!(
                    c.health,
                    Health::Healthy,
                    "waiting on {container} that is not healthy"
                );
            }
            Step::WaitCompleted { container, .. } => {
                let c = self.find(container);
                assert_eq!(
                    c.exit_code,
                    Some(0),
                    "waiting on {container} that did not complete"
                );
            }
            Step::StopContainer { container, .. } => {
                let c = self.find(container);
                c.state = ContainerState::Exited;
                c.exit_code = Some(0);
            }
            Step::RemoveContainer { container, .. } => {
                let c = self.find(container);
                assert!(!c.state.is_up(), "removing {container} while it runs");
                let id = c.id.clone();
                self.observed.containers.retain(|c| c.id != id);
            }
            Step::RemoveNetwork { name } => {
                self.observed.networks.retain(|n| &n.name != name);
            }
        }
    }

    fn apply_all(&mut self, steps: &[Step]) {
        for step in steps {
            self.apply(step);
        }
    }
}

/// The state after installing `target` on an empty engine.
fn installed(target: &Release) -> Observed {
    let p = plan(target, &Observed::default(), &no_locks().into(), T0);
    let mut engine = Engine::new(target, Observed::default());
    engine.apply_all(&p.steps);
    engine.observed
}

fn id_of(observed: &Observed, service: &str) -> String {
    observed
        .containers
        .iter()
        .find(|c| c.labels.get(LABEL_SERVICE).map(String::as_str) == Some(service))
        .map(|c| c.id.clone())
        .unwrap_or_else(|| panic!("no container for {service}"))
}

fn name_of(target: &Release, service: &str) -> String {
    container_name(&target.name, service, &target.services[service].config_hash())
}

fn image(s: &str) -> ImageRef {
    s.parse().unwrap_or_else(|e| panic!("{e}"))
}

fn create(target: &Release, service: &str) -> Step {
    Step::CreateContainer {
        service: service.into(),
        name: name_of(target, service),
        config_hash: target.services[service].config_hash(),
    }
}

fn start(service: &str, container: &str) -> Step {
    Step::StartContainer {
        service: service.into(),
        container: container.into(),
    }
}

fn stop(service: &str, container: &str, grace: u64, signal: Option<&str>) -> Step {
    Step::StopContainer {
        service: service.into(),
        container: container.into(),
        grace: Duration::from_secs(grace),
        signal: signal.map(str::to_owned),
    }
}

fn remove(service: &str, container: &str) -> Step {
    Step::RemoveContainer {
        service: service.into(),
        container: container.into(),
    }
}

fn wait_healthy(service: &str, container: &str) -> Step {
    Step::WaitHealthy {
        service: service.into(),
        container: container.into(),
    }
}

fn wait_started(service: &str, container: &str) -> Step {
    Step::WaitStarted {
        service: service.into(),
        container: container.into(),
    }
}

fn pull(reference: &str) -> Step {
    Step::PullImage {
        image: image(reference),
    }
}

#[test]
fn first_install_creates_everything_in_dependency_order() {
    let t = three("web:1", "download-then-kill");
    let p = plan(&t, &Observed::default(), &no_locks().into(), T0);
    let (db, api, web) = (name_of(&t, "db"), name_of(&t, "api"), name_of(&t, "web"));
    assert!(
        db.starts_with("app_db_") && db.len() == "app_db_".len() + 12,
        "{db}"
    );
    assert_eq!(
        p.steps,
        [
            Step::CreateNetwork {
                name: "app_default".into()
            },
            Step::CreateVolume {
                name: "app_data".into()
            },
            pull("db:1"),
            pull("api:1"),
            pull("web:1"),
            create(&t, "db"),
            start("db", &db),
            create(&t, "api"),
            wait_healthy("db", &db),
            start("api", &api),
            create(&t, "web"),
            wait_started("api", &api),
            start("web", &web),
        ]
    );
    assert!(p.deferred.is_empty());
    // Installed, the same release plans nothing.
    assert!(plan(&t, &installed(&t), &no_locks().into(), T0).is_converged());
}

#[test]
fn one_changed_service_leaves_the_others_untouched() {
    let old = three("web:1", "download-then-kill");
    let new = three("web:2", "download-then-kill");
    let observed = installed(&old);
    let p = plan(&new, &observed, &no_locks().into(), T0);
    let old_web = id_of(&observed, "web");
    assert_eq!(
        p.steps,
        [
            pull("web:2"),
            stop("web", &old_web, 3, Some("SIGINT")),
            remove("web", &old_web),
            create(&new, "web"),
            wait_started("api", &id_of(&observed, "api")),
            start("web", &name_of(&new, "web")),
        ]
    );
    // db and api keep their containers (the wait only reads api's state).
    let mut engine = Engine::new(&new, observed.clone());
    engine.apply_all(&p.steps);
    for service in ["db", "api"] {
        assert_eq!(
            id_of(&engine.observed, service),
            id_of(&observed, service),
            "{service}"
        );
    }
}

#[test]
fn a_new_release_version_with_the_same_services_changes_nothing() {
    let old = three("web:1", "download-then-kill");
    let mut new = old.clone();
    new.version = "2.0".parse().unwrap_or_else(|e| panic!("{e}"));
    assert!(plan(&new, &installed(&old), &no_locks().into(), T0).is_converged());
}

#[test]
fn kill_then_download_stops_before_pulling() {
    let old = three("web:1", "download-then-kill");
    let new = release(&format!(
        "services:{}",
        // db changes image; keeps its kill-then-download strategy.
        "
  db:
    image: db:2
    volumes: [data:/var/lib/db]
    healthcheck: {test: [CMD, check], interval: 1s}
    x-containeros: {update_strategy: kill-then-download}
  api:
    image: api:1
    depends_on:
      db: {condition: service_healthy}
  web:
    image: web:1
    ports: [\"80:80\"]
    stop_grace_period: 3s
    stop_signal: SIGINT
    depends_on: [api]
volumes:
  data:
"
    ));
    let observed = installed(&old);
    let p = plan(&new, &observed, &no_locks().into(), T0);
    let old_db = id_of(&observed, "db");
    let db = name_of(&new, "db");
    assert_eq!(
        p.steps,
        [
            stop("db", &old_db, 10, None),
            remove("db", &old_db),
            pull("db:2"),
            create(&new, "db"),
            start("db", &db),
        ]
    );
}

#[test]
fn hand_over_starts_the_new_container_before_stopping_the_old() {
    let old = three("web:1", "hand-over");
    let mut new = old.clone();
    if let Some(api) = new.services.get_mut("api") {
        api.environment.insert("MODE".into(), "fast".into());
    }
    let observed = installed(&old);
    let p = plan(&new, &observed, &no_locks().into(), T0);
    let old_api = id_of(&observed, "api");
    let api = name_of(&new, "api");
    assert_ne!(api, name_of(&old, "api"), "the two containers must not clash");
    assert_eq!(
        p.steps,
        [
            create(&new, "api"),
            wait_healthy("db", &id_of(&observed, "db")),
            start("api", &api),
            wait_started("api", &api),
            stop("api", &old_api, 10, None),
            remove("api", &old_api),
        ]
    );
}

#[test]
fn hand_over_with_published_ports_falls_back_to_download_then_kill() {
    let text = |v: &str| {
        format!(
            "services:\n  web:\n    image: web:{v}\n    ports: [\"80:80\"]\n    x-containeros: {{update_strategy: hand-over}}\n"
        )
    };
    let (old, new) = (release(&text("1")), release(&text("2")));
    let observed = installed(&old);
    let p = plan(&new, &observed, &no_locks().into(), T0);
    let old_web = id_of(&observed, "web");
    assert_eq!(
        p.steps,
        [
            pull("web:2"),
            stop("web", &old_web, 10, None),
            remove("web", &old_web),
            create(&new, "web"),
            start("web", &name_of(&new, "web")),
        ]
    );
}

#[test]
fn a_held_lock_defers_the_update_until_it_times_out() {
    let old = three("web:1", "download-then-kill");
    let new = three("web:2", "download-then-kill");
    let observed = installed(&old);
    let locks = UpdateLocks {
        held: BTreeMap::from([("web".to_owned(), at(1000))]),
        default_timeout: StdDuration::from_secs(600),
    };
    // Held for 100 s of 600: deferred, nothing touches web.
    let p = plan(&new, &observed, &locks.clone().into(), at(1100));
    assert_eq!(p.steps, []);
    assert_eq!(
        p.deferred,
        [Deferred {
            service: "web".into(),
            held_since: at(1000),
            expires_at: at(1600),
        }]
    );
    // At the timeout the update proceeds as without a lock.
    let p = plan(&new, &observed, &locks.clone().into(), at(1600));
    assert!(p.deferred.is_empty());
    assert_eq!(p, plan(&new, &observed, &no_locks().into(), at(1600)));
    // The release's update_lock_timeout overrides the agent's.
    let mut short = new.clone();
    short.update_lock_timeout = Some(Duration::from_secs(50));
    assert!(
        plan(&short, &observed, &locks.clone().into(), at(1100))
            .deferred
            .is_empty()
    );
    // A lock never defers a first install.
    assert!(
        plan(&new, &Observed::default(), &locks.clone().into(), at(1100))
            .deferred
            .is_empty()
    );
}

#[test]
fn a_lock_defers_only_its_service_and_dependents_wait_on_the_old_container() {
    let old = three("web:1", "download-then-kill");
    let mut new = three("web:2", "download-then-kill");
    if let Some(api) = new.services.get_mut("api") {
        api.environment.insert("MODE".into(), "fast".into());
    }
    let observed = installed(&old);
    let locks = UpdateLocks {
        held: BTreeMap::from([("api".to_owned(), at(0))]),
        default_timeout: StdDuration::from_secs(600),
    };
    let p = plan(&new, &observed, &locks.clone().into(), at(10));
    let old_web = id_of(&observed, "web");
    assert_eq!(p.deferred.len(), 1);
    assert_eq!(
        p.steps,
        [
            pull("web:2"),
            stop("web", &old_web, 3, Some("SIGINT")),
            remove("web", &old_web),
            create(&new, "web"),
            wait_started("api", &id_of(&observed, "api")),
            start("web", &name_of(&new, "web")),
        ]
    );
}

#[test]
fn a_removed_service_is_stopped_and_removed_with_its_network() {
    let old = release(
        "services:
  web:
    image: web:1
    networks: [front]
  cache:
    image: cache:1
    networks: [back]
    volumes: [cache:/c]
networks:
  front:
  back:
volumes:
  cache:
",
    );
    let new = release("services:\n  web:\n    image: web:1\n    networks: [front]\nnetworks:\n  front:\n");
    let observed = installed(&old);
    let p = plan(&new, &observed, &no_locks().into(), T0);
    let cache = id_of(&observed, "cache");
    assert_eq!(
        p.steps,
        [
            stop("cache", &cache, 10, None),
            remove("cache", &cache),
            Step::RemoveNetwork {
                name: "app_back".into()
            },
        ],
        "the volume stays"
    );
}

#[test]
fn a_held_lock_defers_the_removal_of_a_service_and_of_its_network() {
    let old = release(
        "services:\n  web:\n    image: web:1\n  job:\n    image: job:1\n    networks: [jobs]\nnetworks:\n  jobs:\n",
    );
    let new = release("services:\n  web:\n    image: web:1\n");
    let observed = installed(&old);
    let locks = UpdateLocks {
        held: BTreeMap::from([("job".to_owned(), at(0))]),
        default_timeout: StdDuration::from_secs(60),
    };
    let p = plan(&new, &observed, &locks.clone().into(), at(59));
    assert_eq!(p.steps, []);
    assert_eq!(
        p.deferred.iter().map(|d| d.service.as_str()).collect::<Vec<_>>(),
        ["job"]
    );
    let job = id_of(&observed, "job");
    assert_eq!(
        plan(&new, &observed, &locks.clone().into(), at(60)).steps,
        [
            stop("job", &job, 10, None),
            remove("job", &job),
            Step::RemoveNetwork {
                name: "app_jobs".into()
            },
        ]
    );
}

#[test]
fn steps_read_as_one_line_each() {
    let table = [
        (pull("web:1"), "pull web:1"),
        (
            stop("web", "id1", 3, Some("SIGINT")),
            "stop id1 (web) with SIGINT and 3s grace",
        ),
        (wait_healthy("db", "id2"), "wait for id2 (db) to be healthy"),
        (
            Step::RemoveNetwork { name: "app_n".into() },
            "remove network app_n",
        ),
    ];
    for (step, line) in table {
        assert_eq!(step.to_string(), line);
    }
}

#[test]
fn duplicate_containers_are_reduced_to_one() {
    let t = three("web:1", "download-then-kill");
    let mut observed = installed(&t);
    let web = observed
        .containers
        .iter()
        .find(|c| c.name == name_of(&t, "web"))
        .cloned()
        .unwrap_or_else(|| panic!("web not installed"));
    // A copy of the same configuration under another name (running), and
    // an old configuration's container left behind (exited).
    let mut copy = web.clone();
    copy.id = "dup-copy".into();
    copy.name = "app_web_copy".into();
    let mut old = web.clone();
    old.id = "dup-old".into();
    old.name = "app_web_0123456789ab".into();
    old.state = ContainerState::Exited;
    old.labels
        .insert(LABEL_CONFIG_HASH.into(), "0123456789abcdef".into());
    observed.containers.extend([copy, old]);
    let p = plan(&t, &observed, &no_locks().into(), T0);
    assert_eq!(
        p.steps,
        [
            stop("web", "dup-copy", 3, Some("SIGINT")),
            remove("web", "dup-copy"),
            remove("web", "dup-old")
        ]
    );
}

#[test]
fn a_stopped_container_is_started_again() {
    let t = three("web:1", "download-then-kill");
    let mut observed = installed(&t);
    let api = id_of(&observed, "api");
    for c in &mut observed.containers {
        if c.id == api {
            c.state = ContainerState::Exited;
            c.exit_code = Some(137);
        }
    }
    let p = plan(&t, &observed, &no_locks().into(), T0);
    assert_eq!(
        p.steps,
        [wait_healthy("db", &id_of(&observed, "db")), start("api", &api)]
    );
}

#[test]
fn a_completed_one_shot_is_left_stopped() {
    let t = release(
        "services:
  migrate:
    image: api:1
  api:
    image: api:1
    depends_on:
      migrate: {condition: service_completed_successfully}
",
    );
    let observed = installed(&t);
    let migrate = observed
        .containers
        .iter()
        .find(|c| c.labels.get(LABEL_SERVICE).map(String::as_str) == Some("migrate"))
        .map(|c| (c.state, c.exit_code));
    assert_eq!(migrate, Some((ContainerState::Exited, Some(0))));
    assert!(plan(&t, &observed, &no_locks().into(), T0).is_converged());
}

#[test]
fn dead_containers_are_replaced() {
    let t = three("web:1", "hand-over");
    let mut observed = installed(&t);
    let api = id_of(&observed, "api");
    for c in &mut observed.containers {
        if c.id == api {
            c.state = ContainerState::Dead;
        }
    }
    let p = plan(&t, &observed, &no_locks().into(), T0);
    assert_eq!(
        p.steps,
        [
            remove("api", &api),
            create(&t, "api"),
            wait_healthy("db", &id_of(&observed, "db")),
            start("api", &name_of(&t, "api")),
        ]
    );
}

#[test]
fn containers_of_other_releases_are_ignored() {
    let t = three("web:1", "download-then-kill");
    let mut observed = installed(&t);
    for c in &mut observed.containers {
        c.labels.insert(LABEL_RELEASE.into(), "other".into());
        c.name = format!("other-{}", c.name);
    }
    observed.networks.clear();
    let p = plan(&t, &observed, &no_locks().into(), T0);
    let created = p
        .steps
        .iter()
        .filter(|s| matches!(s, Step::CreateContainer { .. }))
        .count();
    assert_eq!(created, 3);
    assert!(!p.steps.iter().any(|s| matches!(s, Step::RemoveContainer { .. })));
}

/// Scenarios for the convergence property: (name, before, target).
fn scenarios() -> Vec<(&'static str, Observed, Release)> {
    let base = three("web:1", "download-then-kill");
    let mut out = vec![("first install", Observed::default(), base.clone())];
    for strategy in ["download-then-kill", "kill-then-download", "hand-over"] {
        let old = three("web:1", strategy);
        // Change every service at once.
        let mut new = three("web:2", strategy);
        for s in new.services.values_mut() {
            s.environment.insert("V".into(), "2".into());
        }
        let name: &'static str = match strategy {
            "download-then-kill" => "all change, download-then-kill",
            "kill-then-download" => "all change, kill-then-download",
            _ => "all change, hand-over",
        };
        out.push((name, installed(&old), new));
    }
    let mut stopped = installed(&base);
    for c in &mut stopped.containers {
        c.state = ContainerState::Exited;
    }
    out.push(("everything stopped", stopped, base.clone()));
    let shrunk = release("services:\n  web:\n    image: web:3\n    networks: [n]\nnetworks:\n  n:\n");
    out.push(("services removed", installed(&base), shrunk));
    let with_job = release(
        "services:
  db:
    image: db:1
    healthcheck: {test: [CMD, check]}
  migrate:
    image: api:2
    depends_on:
      db: {condition: service_healthy}
  api:
    image: api:2
    x-containeros: {update_strategy: hand-over}
    depends_on:
      db: {condition: service_healthy}
      migrate: {condition: service_completed_successfully}
",
    );
    out.push(("one-shot job added", installed(&base), with_job));
    out
}

#[test]
fn replanning_after_every_prefix_converges() {
    for (name, before, target) in scenarios() {
        let p = plan(&target, &before, &no_locks().into(), T0);
        assert!(!p.steps.is_empty(), "{name}: nothing to do");
        for k in 0..=p.steps.len() {
            // The agent dies after k steps, restarts, re-plans, finishes.
            let mut engine = Engine::new(&target, before.clone());
            engine.apply_all(&p.steps[..k]);
            let again = plan(&target, &engine.observed, &no_locks().into(), T0);
            engine.apply_all(&again.steps);
            let last = plan(&target, &engine.observed, &no_locks().into(), T0);
            assert!(
                last.is_converged(),
                "{name}, crash after {k} steps: still {:?}",
                last.steps
            );
            // Exactly one container per service, under the scheme's name,
            // and nothing else of the release.
            let mut names: Vec<&str> = engine
                .observed
                .containers
                .iter()
                .map(|c| c.name.as_str())
                .collect();
            names.sort_unstable();
            let mut want: Vec<String> = target.services.keys().map(|s| name_of(&target, s)).collect();
            want.sort_unstable();
            assert_eq!(names, want, "{name}, crash after {k} steps");
            let volumes: BTreeSet<&str> = engine.observed.volumes.iter().map(String::as_str).collect();
            for v in &before.volumes {
                assert!(volumes.contains(v.as_str()), "{name}: volume {v} lost");
            }
        }
    }
}

fn holding_stopped(services: &[&str]) -> Holds {
    Holds {
        locks: no_locks(),
        stopped: services.iter().map(|s| (*s).to_owned()).collect(),
    }
}

#[test]
fn a_held_stopped_service_is_stopped_and_never_started_again() {
    let t = three("web:1", "download-then-kill");
    let observed = installed(&t);
    let web = id_of(&observed, "web");
    let holds = holding_stopped(&["web"]);
    // Running: stopped with its own grace and signal, nothing else.
    let p = plan(&t, &observed, &holds, T0);
    assert_eq!(p.steps, [stop("web", &web, 3, Some("SIGINT"))]);
    let mut engine = Engine::new(&t, observed.clone());
    engine.apply_all(&p.steps);
    // Stopped: the periodic reconcile leaves it stopped (without the hold
    // it would start it again).
    assert!(plan(&t, &engine.observed, &holds, T0).is_converged());
    let api = id_of(&observed, "api");
    assert_eq!(
        plan(&t, &engine.observed, &no_locks().into(), T0).steps,
        [wait_started("api", &api), start("web", &web)]
    );
}

#[test]
fn an_update_replaces_a_held_stopped_container_without_starting_it() {
    let old = three("web:1", "download-then-kill");
    let new = three("web:2", "download-then-kill");
    let mut observed = installed(&old);
    let old_web = id_of(&observed, "web");
    for c in &mut observed.containers {
        if c.id == old_web {
            c.state = ContainerState::Exited;
        }
    }
    let p = plan(&new, &observed, &holding_stopped(&["web"]), T0);
    assert_eq!(
        p.steps,
        [remove("web", &old_web), pull("web:2"), create(&new, "web")]
    );
    let mut engine = Engine::new(&new, observed);
    engine.apply_all(&p.steps);
    assert!(plan(&new, &engine.observed, &holding_stopped(&["web"]), T0).is_converged());
}

#[test]
fn dependents_of_a_held_stopped_service_start_without_waiting_for_it() {
    let t = three("web:1", "download-then-kill");
    // First install with db held stopped: db is created, not started, and
    // api starts without waiting for db's health.
    let p = plan(&t, &Observed::default(), &holding_stopped(&["db"]), T0);
    let (db, api) = (name_of(&t, "db"), name_of(&t, "api"));
    assert!(p.steps.contains(&create(&t, "db")));
    assert!(!p.steps.contains(&start("db", &db)));
    assert!(!p.steps.contains(&wait_healthy("db", &db)));
    assert!(p.steps.contains(&start("api", &api)));
    let mut engine = Engine::new(&t, Observed::default());
    engine.apply_all(&p.steps);
    assert!(plan(&t, &engine.observed, &holding_stopped(&["db"]), T0).is_converged());
}

#[test]
fn only_kill_then_download_frees_storage_before_pulling() {
    for (strategy, frees) in [
        ("download-then-kill", false),
        ("hand-over", false),
        ("kill-then-download", true),
    ] {
        let old = three("web:1", strategy);
        let mut new = three("web:1", strategy);
        new.services.get_mut("api").expect("api").image = image("api:2");
        let p = plan(&new, &installed(&old), &no_locks().into(), T0);
        assert_eq!(p.frees_before_pull, frees, "{strategy}");
    }
    // db is kill-then-download in every variant.
    let old = three("web:1", "download-then-kill");
    let mut new = old.clone();
    new.services.get_mut("db").expect("db").image = image("db:2");
    assert!(plan(&new, &installed(&old), &no_locks().into(), T0).frees_before_pull);
}
