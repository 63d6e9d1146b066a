//! Interoperability with the real tools: libubootenv's `fw_printenv` /
//! `fw_setenv` (Debian `libubootenv-tool`) and `grub-editenv` (Debian
//! `grub-common`), on temporary files standing in for the boot medium.
//!
//! The tools are required: a missing tool fails the test with the package
//! to install, so CI cannot go green without having proven anything.

mod failed_boot;
mod grub;
mod harness;
mod uboot;
