//! A real 3-member etcd 3.4 cluster on loopback, for the fleet-mode tests
//! (`tests/fleet.rs`).
//!
//! Each member (`m0`, `m1`, `m2`) has its client and peer port from one block reserved
//! with [`reserve_ports`], its `--data-dir` under the test's temp dir and its output in
//! `<dir>/etcd-m<i>[.<restart>].stdout|stderr`. The members are [`Subprocess`] guards:
//! killed (SIGKILL) and reaped when the cluster is dropped. `etcdctl` runs with
//! `ETCDCTL_API=3` and every member as an endpoint.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{Output, PortLease, Subprocess, reserve_ports, run_with_timeout};

/// The etcd server binary (Debian `etcd-server`, 3.4).
pub const ETCD: &str = "/usr/bin/etcd";
/// The etcd client binary (Debian `etcd-client`, 3.4).
pub const ETCDCTL: &str = "/usr/bin/etcdctl";

/// How many members the cluster has.
pub const MEMBERS: usize = 3;

/// How long [`EtcdCluster::start`] and [`EtcdCluster::start_member`] wait for health.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running 3-member etcd cluster; every member is killed when it is dropped.
pub struct EtcdCluster {
    dir: PathBuf,
    /// Client ports (`--listen-client-urls`), by member.
    pub client_ports: [u16; MEMBERS],
    /// Peer ports (`--listen-peer-urls`), by member.
    pub peer_ports: [u16; MEMBERS],
    /// The running members (`None` while stopped or killed).
    members: Vec<Option<Subprocess>>,
    /// How many times each member was started (names its log files).
    starts: [usize; MEMBERS],
    _lease: PortLease,
}

impl EtcdCluster {
    /// Start `m0`, `m1` and `m2` with data dirs and logs under `<dir>/etcd` and wait
    /// until `etcdctl endpoint health` passes on all three.
    pub fn start(dir: &Path) -> Self {
        let dir = dir.join("etcd");
        fs::create_dir_all(&dir).unwrap();
        let (p, lease) = reserve_ports(2 * MEMBERS as u16, None);
        let client_ports = [p, p + 1, p + 2];
        let peer_ports = [p + 3, p + 4, p + 5];
        let mut cluster = Self {
            dir,
            client_ports,
            peer_ports,
            members: (0..MEMBERS).map(|_| None).collect(),
            starts: [0; MEMBERS],
            _lease: lease,
        };
        for i in 0..MEMBERS {
            cluster.spawn_member(i);
        }
        if !cluster.wait_healthy(START_TIMEOUT) {
            cluster.dump();
            panic!(
                "etcd cluster on client ports {client_ports:?} not healthy within {START_TIMEOUT:?}"
            );
        }
        cluster
    }

    /// The data dir of member `i`.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("m{i}.data"))
    }

    fn peer_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.peer_ports[i])
    }

    /// `http://127.0.0.1:<client port>` of member `i`.
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.client_ports[i])
    }

    /// Every member's client URL, running or not, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        (0..MEMBERS).map(|i| self.endpoint(i)).collect()
    }

    /// The endpoints as one `--endpoints` value.
    fn endpoints_arg(&self) -> String {
        self.endpoints().join(",")
    }

    fn spawn_member(&mut self, i: usize) {
        assert!(
            self.members[i].is_none(),
            "etcd member m{i} is already running"
        );
        let initial_cluster: Vec<String> = (0..MEMBERS)
            .map(|j| format!("m{j}={}", self.peer_url(j)))
            .collect();
        // A member restarted on an existing data dir ignores the initial-cluster flags
        // (its membership is in the data dir), so the same command line works for both.
        let state = if self.starts[i] == 0 {
            "new"
        } else {
            "existing"
        };
        let mut cmd = Command::new(ETCD);
        cmd.arg("--name")
            .arg(format!("m{i}"))
            .arg("--data-dir")
            .arg(self.data_dir(i))
            .arg("--listen-client-urls")
            .arg(self.endpoint(i))
            .arg("--advertise-client-urls")
            .arg(self.endpoint(i))
            .arg("--listen-peer-urls")
            .arg(self.peer_url(i))
            .arg("--initial-advertise-peer-urls")
            .arg(self.peer_url(i))
            .arg("--initial-cluster")
            .arg(initial_cluster.join(","))
            .arg("--initial-cluster-state")
            .arg(state)
            .arg("--initial-cluster-token")
            .arg("certkeeper-test")
            .current_dir(&self.dir)
            // An operator's etcd environment must not leak into the test's cluster.
            .env_remove("ETCD_NAME")
            .env_remove("ETCD_DATA_DIR")
            .env_remove("ETCD_INITIAL_CLUSTER")
            .env_remove("ETCD_INITIAL_CLUSTER_STATE");
        let name = match self.starts[i] {
            0 => format!("etcd-m{i}"),
            n => format!("etcd-m{i}.{n}"),
        };
        self.starts[i] += 1;
        self.members[i] = Some(Subprocess::spawn(&name, cmd, &self.dir));
    }

    /// Is member `i` running?
    pub fn is_running(&mut self, i: usize) -> bool {
        self.members[i].as_mut().is_some_and(Subprocess::is_running)
    }

    /// The pid of member `i`, if it is running.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].as_ref().map(Subprocess::id)
    }

    /// SIGTERM member `i` and wait (at most 20 s) until it has exited.
    pub fn stop_member(&mut self, i: usize) {
        let mut m = self.members[i]
            .take()
            .unwrap_or_else(|| panic!("etcd member m{i} is not running"));
        let _ = kill(Pid::from_raw(m.id() as i32), Signal::SIGTERM);
        if m.wait_timeout(Duration::from_secs(20)).is_none() {
            m.dump();
            panic!("etcd member m{i} did not exit within 20 s of SIGTERM");
        }
    }

    /// SIGKILL member `i` (and reap it).
    pub fn kill_member(&mut self, i: usize) {
        let mut m = self.members[i]
            .take()
            .unwrap_or_else(|| panic!("etcd member m{i} is not running"));
        let _ = m.child.kill();
        let _ = m.child.wait();
    }

    /// Start member `i` again on its data dir and wait until it answers
    /// `endpoint health` on its own endpoint (a member alone without quorum never does:
    /// use [`Self::start_member_no_wait`] then).
    pub fn start_member(&mut self, i: usize) {
        self.start_member_no_wait(i);
        let ep = self.endpoint(i);
        let start = Instant::now();
        while start.elapsed() < START_TIMEOUT {
            if self.health_of(&ep) {
                return;
            }
            if !self.is_running(i) {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
        self.dump();
        panic!("restarted etcd member m{i} not healthy within {START_TIMEOUT:?}");
    }

    /// Start member `i` again on its data dir without waiting for it.
    pub fn start_member_no_wait(&mut self, i: usize) {
        self.spawn_member(i);
    }

    /// `etcdctl endpoint health` on one endpoint.
    fn health_of(&self, endpoint: &str) -> bool {
        let mut cmd = Command::new(ETCDCTL);
        cmd.env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(endpoint)
            .args(["--dial-timeout", "1s", "--command-timeout", "2s"])
            .args(["endpoint", "health"]);
        run_with_timeout(cmd, Duration::from_secs(10)).code == 0
    }

    /// Wait until every running member's endpoint passes `endpoint health` (which
    /// needs quorum: it reads a key through raft). False after `timeout`.
    pub fn wait_healthy(&mut self, timeout: Duration) -> bool {
        let start = Instant::now();
        loop {
            let running: Vec<usize> = (0..MEMBERS).filter(|&i| self.is_running(i)).collect();
            if !running.is_empty() && running.iter().all(|&i| self.health_of(&self.endpoint(i))) {
                return true;
            }
            if start.elapsed() > timeout {
                return false;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Run `etcdctl --endpoints <all> <args>` (API 3), bounded at 30 s.
    pub fn etcdctl_output(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(ETCDCTL);
        cmd.env("ETCDCTL_API", "3")
            .env_remove("ETCDCTL_ENDPOINTS")
            .arg("--endpoints")
            .arg(self.endpoints_arg())
            .args(["--dial-timeout", "2s", "--command-timeout", "5s"])
            .args(args);
        run_with_timeout(cmd, Duration::from_secs(30))
    }

    /// Run `etcdctl <args>` (see [`Self::etcdctl_output`]) and return its stdout;
    /// panics when it fails.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let out = self.etcdctl_output(args);
        assert_eq!(out.code, 0, "etcdctl {args:?} failed:\n{out}");
        out.stdout
    }

    /// The value of `key` (`None` when absent).
    pub fn get(&self, key: &str) -> Option<String> {
        let out = self.etcdctl(&["get", key, "--print-value-only"]);
        // etcdctl prints the value followed by a newline; no key, no output.
        (!out.is_empty()).then(|| out.strip_suffix('\n').unwrap_or(&out).to_owned())
    }

    /// [`Self::get`] that reports a failing etcdctl (no quorum) instead of panicking.
    pub fn try_get(&self, key: &str) -> Result<Option<String>, String> {
        let out = self.etcdctl_output(&["get", key, "--print-value-only"]);
        if out.code != 0 {
            return Err(out.stderr.trim().to_owned());
        }
        let v = out.stdout;
        Ok((!v.is_empty()).then(|| v.strip_suffix('\n').unwrap_or(&v).to_owned()))
    }

    /// Every key under `prefix` with its value, in key order.
    pub fn get_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        let out = self.etcdctl(&["get", "--prefix", prefix, "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("etcdctl get -w json is not JSON ({e}): {out}"));
        let b64 = |s: &serde_json::Value| -> String {
            use base64::Engine;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(s.as_str().unwrap_or_default())
                .unwrap_or_default();
            String::from_utf8_lossy(&bytes).into_owned()
        };
        v["kvs"]
            .as_array()
            .map(|kvs| {
                kvs.iter()
                    .map(|kv| (b64(&kv["key"]), b64(&kv["value"])))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The member that is the raft leader right now, if the reachable members agree on one.
    pub fn leader(&self) -> Option<usize> {
        let out = self.etcdctl_output(&["endpoint", "status", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
        let statuses = v.as_array()?;
        let leader = statuses.first()?["Status"]["leader"].as_u64()?;
        statuses.iter().find_map(|s| {
            (s["Status"]["header"]["member_id"].as_u64() == Some(leader)).then(|| {
                let ep = s["Endpoint"].as_str().unwrap_or_default();
                self.endpoints().iter().position(|e| e == ep)
            })?
        })
    }

    /// Print every member's log (used when a test fails).
    pub fn dump(&self) {
        for m in self.members.iter().flatten() {
            m.dump();
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "===== etcd cluster (client ports {:?}) logs in {} =====",
                self.client_ports,
                self.dir.display()
            );
        }
        // Each Subprocess's Drop kills and reaps its member.
    }
}
