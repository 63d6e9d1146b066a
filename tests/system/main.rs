//! System tests: the built agent and CLI against a private dbus-daemon (with
//! the shipped policy), a private dockerd, and the stand-in unit manager.
//! They need root (see `containeros_tests::require_root`) and the Debian
//! packages `.ci/run` installs.

mod apps;
mod bench;
mod channel;
mod config;
mod delta;
mod device;
mod images;
mod lifecycle;
mod os;
mod podman;
mod policy;
mod provision;
mod publish;
mod reboot;
mod release;
