//! A network namespace of the test's own, joined to this machine by a veth
//! pair, for servers that must not listen on loopback (EndpointSlices refuse
//! loopback addresses) and must not listen on this machine's own address
//! either: test traffic stays on loopback or inside namespaces tests made.
//!
//! Namespace `igt-<pid>-<n>` holds the addresses `198.19.<100+n>.2` and up
//! (`/24`); the host end of the pair, `igt<n>h`, holds `198.19.<100+n>.1`.
//! The veth name is the lock: creating it is atomic, so concurrent tests and
//! concurrent test binaries pick different `n`. Dropping the value deletes the
//! namespace, which deletes the pair; namespaces of test processes that died
//! are deleted by the next test that makes one.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

/// The most namespaces at a time (`198.19.100.0/24` to `198.19.199.0/24`).
const SLOTS: u32 = 100;

pub struct Netns {
    pub name: String,
    slot: u32,
    /// Addresses added to the namespace's end of the pair so far.
    added: Mutex<BTreeSet<u8>>,
}

/// Panics saying why when this process is not root: tests that need
/// namespaces fail rather than skip.
pub fn require_root(what: &str) {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next().map(str::to_string))
        })
        .unwrap_or_default();
    assert!(
        uid == "0",
        "{what} needs root (network namespaces); run the tests as root, as .ci/run does"
    );
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("running ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must(args: &[&str]) {
    ip(args).unwrap_or_else(|e| panic!("setting up a test network: {e}"));
}

/// Delete namespaces left by test processes that no longer run.
fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(pid) = name
            .strip_prefix("igt-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

impl Netns {
    /// A new namespace with its veth pair up, loopback up, and the first
    /// address (`address(2)`) in place.
    pub fn create() -> Netns {
        require_root("a test network namespace");
        sweep_stale();
        for slot in 0..SLOTS {
            let name = format!("igt-{}-{slot}", std::process::id());
            let (host, peer) = (format!("igt{slot}h"), format!("igt{slot}n"));
            if ip(&["netns", "add", &name]).is_err() {
                continue;
            }
            if ip(&[
                "link", "add", &host, "type", "veth", "peer", "name", &peer, "netns", &name,
            ])
            .is_err()
            {
                // Another test holds this slot.
                let _ = ip(&["netns", "del", &name]);
                continue;
            }
            let netns = Netns {
                name,
                slot,
                added: Mutex::new(BTreeSet::new()),
            };
            must(&[
                "addr",
                "add",
                &format!("{}/24", netns.host_address()),
                "dev",
                &host,
            ]);
            must(&["link", "set", &host, "up"]);
            must(&["-n", &netns.name, "link", "set", &peer, "up"]);
            must(&["-n", &netns.name, "link", "set", "lo", "up"]);
            netns.address(2);
            return netns;
        }
        panic!("no free test network: igt0h to igt{}h all exist", SLOTS - 1)
    }

    fn prefix(&self) -> String {
        format!("198.19.{}", 100 + self.slot)
    }

    /// The host's end of the pair (the source of traffic from this machine).
    pub fn host_address(&self) -> String {
        format!("{}.1", self.prefix())
    }

    /// The namespace's first address, where its servers listen by default.
    pub fn ip(&self) -> String {
        self.address(2)
    }

    /// Address `198.19.<100+n>.<last>` inside the namespace (2..=254), added
    /// on first use: a test gives each simulated Pod an address of its own.
    pub fn address(&self, last: u8) -> String {
        assert!(
            (2..=254).contains(&last),
            "address .{last} is not for hosts"
        );
        let address = format!("{}.{last}", self.prefix());
        let mut added = self.added.lock().unwrap_or_else(|e| e.into_inner());
        if added.insert(last) {
            must(&[
                "-n",
                &self.name,
                "addr",
                "add",
                &format!("{address}/24"),
                "dev",
                &format!("igt{}n", self.slot),
            ]);
        }
        address
    }

    /// `binary`, to be run inside the namespace.
    pub fn command(&self, binary: &Path) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.name))
            .arg("--")
            .arg(binary);
        command
    }

    /// A listening socket inside the namespace (it stays there whichever
    /// thread then uses it): a thread joins the namespace, binds, and ends.
    pub fn bind(&self, address: SocketAddr) -> std::net::TcpListener {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            // SAFETY: setns on a valid namespace file descriptor changes only
            // the network namespace of this short-lived thread.
            let joined = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(
                joined,
                0,
                "joining {path}: {}",
                std::io::Error::last_os_error()
            );
            std::net::TcpListener::bind(address)
                .unwrap_or_else(|e| panic!("binding {address} in {path}: {e}"))
        })
        .join()
        .expect("the binding thread")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}
