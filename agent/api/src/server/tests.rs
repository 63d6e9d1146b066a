use futures_util::StreamExt;

use super::*;
use crate::{AgentProxy, BUS_NAME, INSTALLER_INTERFACE, INTERFACE, InstallerProxy};

/// A server and a client joined by a socket pair: the real zbus object
/// server and proxy, no bus daemon needed.
async fn pair() -> (
    zbus::Connection,
    zbus::Connection,
    Served,
    mpsc::Receiver<Command>,
) {
    let (a, b) = tokio::net::UnixStream::pair().expect("socketpair");
    let guid = zbus::Guid::generate();
    let server = zbus::connection::Builder::unix_stream(a)
        .server(guid)
        .expect("server")
        .p2p()
        .build();
    let client = zbus::connection::Builder::unix_stream(b).p2p().build();
    let (server, client) = tokio::try_join!(server, client).expect("connect");
    let (tx, rx) = mpsc::channel(4);
    let status = Status {
        agent_version: "1.2.3".into(),
        operation: "idle".into(),
        engine_state: "unknown".into(),
        ..Status::default()
    };
    let handle = serve_on(&server, status, tx).await.expect("serve");
    (server, client, handle, rx)
}

async fn proxy(client: &zbus::Connection) -> AgentProxy<'static> {
    AgentProxy::builder(client)
        .destination(BUS_NAME)
        .expect("name")
        .build()
        .await
        .expect("proxy")
}

#[tokio::test]
async fn properties_are_served_and_changes_are_signalled() {
    let (_server, client, served, _rx) = pair().await;
    let handle = served.status;
    let agent = proxy(&client).await;
    assert_eq!(agent.agent_version().await.expect("get"), "1.2.3");
    assert_eq!(agent.engine_state().await.expect("get"), "unknown");

    let props = zbus::fdo::PropertiesProxy::builder(&client)
        .destination(BUS_NAME)
        .expect("dest")
        .path(crate::OBJECT_PATH)
        .expect("path")
        .build()
        .await
        .expect("props");
    let mut changes = props.receive_properties_changed().await.expect("subscribe");
    handle
        .update(|s| {
            s.engine_state = "up".into();
            s.engine_restarts = 2;
        })
        .await
        .expect("update");
    let mut seen = std::collections::BTreeMap::new();
    while seen.len() < 2 {
        let signal = changes.next().await.expect("signal");
        let args = signal.args().expect("args");
        assert_eq!(args.interface_name.as_str(), INTERFACE);
        for (name, value) in args.changed_properties() {
            seen.insert(name.to_string(), format!("{value:?}"));
        }
    }
    assert!(seen["EngineState"].contains("up"), "{seen:?}");
    assert!(seen["EngineRestarts"].contains('2'), "{seen:?}");
    let status = crate::status(&agent).await.expect("GetAll");
    assert_eq!((status.engine_state.as_str(), status.engine_restarts), ("up", 2));
}

#[tokio::test]
async fn methods_become_commands_and_carry_the_answer_back() {
    let (_server, client, _handle, mut rx) = pair().await;
    let agent = proxy(&client).await;
    let daemon = tokio::spawn(async move {
        let Some(Command::RestartEngine(reply)) = rx.recv().await else {
            panic!("no command")
        };
        let _ = reply.send(Err("restart job of docker.service ended with \"failed\"".into()));
    });
    let err = agent.restart_engine().await.expect_err("refused");
    daemon.await.expect("daemon");
    let message = crate::ClientError::from(err).to_string();
    assert!(
        message.contains("the agent refused: restart job of docker.service"),
        "{message}"
    );
}

async fn installer(client: &zbus::Connection) -> InstallerProxy<'static> {
    InstallerProxy::builder(client)
        .destination(BUS_NAME)
        .expect("name")
        .build()
        .await
        .expect("proxy")
}

#[tokio::test]
async fn install_passes_source_and_options_to_the_daemon() {
    let (_server, client, _served, mut rx) = pair().await;
    let installer = installer(&client).await;
    let daemon = tokio::spawn(async move {
        let Some(Command::InstallOs {
            source,
            options,
            reply,
        }) = rx.recv().await
        else {
            panic!("no InstallOs command")
        };
        let _ = reply.send(Ok(()));
        (source, options)
    });
    let options = InstallOptions {
        force_downgrade: true,
        reboot: false,
    };
    installer
        .install("/media/usb/release.json", options.to_dbus())
        .await
        .expect("install accepted");
    let (source, received) = daemon.await.expect("daemon");
    assert_eq!(source, "/media/usb/release.json");
    assert_eq!(received, options);
}

#[tokio::test]
async fn install_options_may_be_left_out() {
    let (_server, client, _served, mut rx) = pair().await;
    let installer = installer(&client).await;
    let daemon = tokio::spawn(async move {
        let Some(Command::InstallOs { options, reply, .. }) = rx.recv().await else {
            panic!("no InstallOs command")
        };
        let _ = reply.send(Ok(()));
        options
    });
    let only_reboot = std::collections::HashMap::from([("reboot", zbus::zvariant::Value::from(true))]);
    installer
        .install("https://updates.example/stable/release.json", only_reboot)
        .await
        .expect("install accepted");
    let options = daemon.await.expect("daemon");
    assert_eq!(
        options,
        InstallOptions {
            force_downgrade: false,
            reboot: true
        }
    );
}

#[tokio::test]
async fn install_refuses_unknown_options_and_wrong_types_by_name() {
    let (_server, client, _served, mut rx) = pair().await;
    let installer = installer(&client).await;
    let cases = [
        (
            "force",
            zbus::zvariant::Value::from(true),
            "unknown install option `force`",
        ),
        (
            "reboot",
            zbus::zvariant::Value::from("yes"),
            "install option `reboot` must be a boolean (b), not `s`",
        ),
    ];
    for (key, value, wanted) in cases {
        let options = std::collections::HashMap::from([(key, value)]);
        let err = installer
            .install("/data/release.json", options)
            .await
            .expect_err("refused");
        let message = crate::ClientError::from(err).to_string();
        assert!(message.contains(wanted), "{key}: {message}");
    }
    assert!(rx.try_recv().is_err(), "a refused Install reached the daemon");
}

#[tokio::test]
async fn mark_good_returns_the_daemons_message() {
    let (_server, client, _served, mut rx) = pair().await;
    let installer = installer(&client).await;
    let daemon = tokio::spawn(async move {
        let Some(Command::MarkGood(reply)) = rx.recv().await else {
            panic!("no MarkGood command")
        };
        let _ = reply.send(Ok("slot B marked good".into()));
        let Some(Command::Rollback(reply)) = rx.recv().await else {
            panic!("no Rollback command")
        };
        let _ = reply.send(Err("slot A holds no committed OS".into()));
    });
    assert_eq!(
        installer.mark_good().await.expect("mark good"),
        "slot B marked good"
    );
    let err = installer.rollback().await.expect_err("refused");
    daemon.await.expect("daemon");
    let message = crate::ClientError::from(err).to_string();
    assert_eq!(message, "the agent refused: slot A holds no committed OS");
}

#[tokio::test]
async fn installer_changes_are_signalled_and_read_back() {
    let (_server, client, served, _rx) = pair().await;
    let installer = installer(&client).await;
    assert_eq!(installer.state().await.expect("get"), "idle");

    let props = zbus::fdo::PropertiesProxy::builder(&client)
        .destination(BUS_NAME)
        .expect("dest")
        .path(crate::OBJECT_PATH)
        .expect("path")
        .build()
        .await
        .expect("props");
    let mut changes = props.receive_properties_changed().await.expect("subscribe");
    served
        .installer
        .update(|s| {
            s.state = "downloading".into();
            s.target_slot = "B".into();
            s.bytes_total = 1 << 30;
        })
        .await
        .expect("update");
    let mut seen = std::collections::BTreeMap::new();
    while seen.len() < 3 {
        let signal = changes.next().await.expect("signal");
        let args = signal.args().expect("args");
        assert_eq!(args.interface_name.as_str(), INSTALLER_INTERFACE);
        for (name, value) in args.changed_properties() {
            seen.insert(name.to_string(), format!("{value:?}"));
        }
    }
    assert_eq!(
        seen.keys().map(String::as_str).collect::<Vec<_>>(),
        ["BytesTotal", "State", "TargetSlot"]
    );
    assert!(seen["State"].contains("downloading"), "{seen:?}");
    assert!(seen["BytesTotal"].contains("1073741824"), "{seen:?}");

    let status = crate::installer_status(&installer).await.expect("GetAll");
    assert_eq!(status, served.installer.get().await);
    assert_eq!(
        (
            status.state.as_str(),
            status.target_slot.as_str(),
            status.bytes_total
        ),
        ("downloading", "B", 1 << 30)
    );
}

#[tokio::test]
async fn installer_signals_reach_the_proxy() {
    let (_server, client, served, _rx) = pair().await;
    let installer = installer(&client).await;
    let mut progress = installer.receive_progress().await.expect("subscribe");
    let mut completed = installer.receive_completed().await.expect("subscribe");
    served
        .installer
        .progress("downloading", 512, 1024)
        .await
        .expect("emit");
    InstallerInterface::completed(
        served.installer.signal_emitter(),
        true,
        "pending-reboot",
        "slot B written and verified",
    )
    .await
    .expect("emit");
    let p = progress.next().await.expect("progress");
    let p = p.args().expect("args");
    assert_eq!((p.state.as_str(), p.done, p.total), ("downloading", 512, 1024));
    let c = completed.next().await.expect("completed");
    let c = c.args().expect("args");
    assert_eq!(
        (c.success, c.state.as_str(), c.message.as_str()),
        (true, "pending-reboot", "slot B written and verified")
    );
}

/// The checked-in XML is what clients and docs rely on; regenerate it with
/// `CONTAINEROS_BLESS=1 cargo test -p containeros-api` after an intended
/// change.
#[tokio::test]
async fn introspection_xml_matches_the_checked_in_file() {
    let (_server, client, _handle, _rx) = pair().await;
    let introspect = zbus::fdo::IntrospectableProxy::builder(&client)
        .destination(BUS_NAME)
        .expect("dest")
        .path(crate::OBJECT_PATH)
        .expect("path")
        .build()
        .await
        .expect("proxy");
    let xml = introspect.introspect().await.expect("introspect");
    let ours = [INTERFACE, crate::APPS_INTERFACE, INSTALLER_INTERFACE]
        .iter()
        .map(|name| interface_block(&xml, name).unwrap_or_else(|| panic!("{name} is served")))
        .collect::<Vec<_>>()
        .join("\n");
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../dist/org.containeros.Agent1.xml");
    let wanted = format!(
        "<!DOCTYPE node PUBLIC \"-//freedesktop//DTD D-BUS Object Introspection 1.0//EN\"\n \
         \"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd\">\n\
         <!-- Generated from the agent by `CONTAINEROS_BLESS=1 cargo test -p containeros-api`; do not edit. -->\n\
         <node>\n{ours}\n</node>\n"
    );
    if std::env::var_os("CONTAINEROS_BLESS").is_some() {
        std::fs::write(file, &wanted).expect("write xml");
    }
    let checked_in = std::fs::read_to_string(file).unwrap_or_default();
    assert_eq!(
        checked_in, wanted,
        "agent/dist/org.containeros.Agent1.xml drifted from the code; \
         run `CONTAINEROS_BLESS=1 cargo test -p containeros-api` and commit it"
    );
}

fn interface_block(xml: &str, name: &str) -> Option<String> {
    let start = xml.find(&format!("<interface name=\"{name}\">"))?;
    let end = start + xml[start..].find("</interface>")? + "</interface>".len();
    // Re-indent line by line so the file does not depend on zbus' indentation.
    let lines: Vec<String> = xml[start..end]
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let depth = if l.starts_with("<interface") || l.starts_with("</interface") {
                1
            } else if l.starts_with("<arg") || l.starts_with("<annotation") {
                3
            } else {
                2
            };
            format!("{}{l}", "  ".repeat(depth))
        })
        .collect();
    Some(lines.join("\n"))
}
