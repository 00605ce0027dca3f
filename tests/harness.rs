//! Checks of the test harness itself (`tests/common`): what the other suites rely on.

mod common;

use std::process::Command;

use common::*;

/// `flock -n FILE true` in another process: does it get the lock?
fn other_process_can_lock(port: u16) -> bool {
    let path = format!("{PORT_LOCK_DIR}/{port}.lock");
    let st = Command::new("flock")
        .args(["-n", &path, "true"])
        .status()
        .expect("run flock(1)");
    st.success()
}

/// A reserved block of ports is locked against every other process (nextest runs each
/// test in its own), stays out of the kernel's ephemeral range, and is free again once
/// its lease is dropped; a second reservation in the same process gets other ports.
#[test]
fn reserved_ports_are_exclusive_across_processes_until_dropped() {
    let (a, lease_a) = Ports::reserve();
    let (b, lease_b) = Ports::reserve();
    let block_a: Vec<u16> = (a.acme..a.acme + 6).collect();
    let block_b: Vec<u16> = (b.acme..b.acme + 6).collect();
    assert_eq!(
        [a.mgmt, a.http, a.tls, a.dns, a.dns_mgmt],
        [a.acme + 1, a.acme + 2, a.acme + 3, a.acme + 4, a.acme + 5]
    );
    assert!(
        block_a.iter().all(|p| !block_b.contains(p)),
        "two reservations overlap: {a:?} and {b:?}"
    );
    for p in block_a.iter().chain(&block_b) {
        assert!(*p < 32768, "port {p} is in the ephemeral range");
        assert!(
            !other_process_can_lock(*p),
            "another process could take reserved port {p}"
        );
    }
    drop(lease_a);
    for p in &block_a {
        assert!(
            other_process_can_lock(*p),
            "port {p} is still locked after its lease was dropped"
        );
    }
    drop(lease_b);
}
