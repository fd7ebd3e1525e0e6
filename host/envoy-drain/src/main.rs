//! `infergate-envoy-drain`: the preStop hook of the Envoys the controller
//! deploys, run inside the Envoy container (so Envoy's admin interface on
//! the Pod's loopback is reachable). Kubernetes runs it when the Pod is
//! deleted, at the same time as it takes the Pod out of its Service's
//! endpoints; SIGTERM follows when it returns.
//!
//! 1. `POST /drain_listeners?graceful&skip_exit`: for Envoy's
//!    `--drain-time-s`, listeners still accept (clients whose load balancer
//!    has not yet heard of the removal are served) while Envoy discourages
//!    keep-alive: `Connection: close` on HTTP/1.1 responses, GOAWAY on
//!    HTTP/2, so clients reconnect, to another Envoy. Then the listeners
//!    stop; Envoy does not exit (`skip_exit`).
//! 2. Wait `--drain-seconds`, then until no downstream request is active
//!    (streamed completions may be long) or `--max-wait-seconds` have
//!    passed in all.
//!
//! With `--ready` it is the Envoy container's readiness check instead:
//! success once Envoy's admin `/ready` answers 200, that is once Envoy has
//! its first configuration from xDS (listeners warmed; the bootstrap makes
//! it wait for it without a time limit). A Gateway none of whose listeners
//! can be served is ready too: a probe on a listener port never would be.
//!
//! Only std: the Envoy image holds Envoy and this.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Args {
    admin_port: u16,
    drain_seconds: u64,
    max_wait_seconds: u64,
    /// Only check readiness.
    ready: bool,
}

const USAGE: &str = "usage: infergate-envoy-drain --admin-port PORT --drain-seconds N [--max-wait-seconds M]\n\
       infergate-envoy-drain --admin-port PORT --ready\n\
Drains the local Envoy's listeners gracefully (admin on 127.0.0.1:PORT), waits N seconds, then until\n\
no downstream request is active, at most M seconds in all (default N + 8). With --ready: succeeds\n\
when Envoy has its configuration (admin /ready answers 200), for a readiness probe.";

fn parse(args: &[String]) -> Result<Args, String> {
    let mut ready = false;
    let mut admin_port = None;
    let mut drain_seconds = None;
    let mut max_wait_seconds = None;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{flag} needs a value"))?
                .parse::<u64>()
                .map_err(|_| format!("{flag}: expected a whole number"))
        };
        match flag.as_str() {
            "--admin-port" => {
                admin_port = Some(u16::try_from(value()?).map_err(|_| "--admin-port: too large")?)
            }
            "--drain-seconds" => drain_seconds = Some(value()?),
            "--max-wait-seconds" => max_wait_seconds = Some(value()?),
            "--ready" => ready = true,
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let admin_port = admin_port.ok_or("--admin-port is required")?;
    if ready {
        return Ok(Args {
            admin_port,
            drain_seconds: 0,
            max_wait_seconds: 0,
            ready,
        });
    }
    let drain_seconds = drain_seconds.ok_or("--drain-seconds is required")?;
    Ok(Args {
        admin_port,
        drain_seconds,
        max_wait_seconds: max_wait_seconds.unwrap_or(drain_seconds + 8),
        ready,
    })
}

/// One request to the admin interface; the status and the body.
fn admin(port: u16, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Active downstream requests of every HTTP connection manager but the
/// admin interface's, from `/stats` lines `http.<prefix>.downstream_rq_active: N`.
/// (A chunked body's size lines never look like that.)
fn active_requests(stats: &str) -> u64 {
    stats
        .lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(": ")?;
            let prefix = name
                .strip_prefix("http.")?
                .strip_suffix(".downstream_rq_active")?;
            (prefix != "admin").then(|| value.trim().parse::<u64>().ok())?
        })
        .sum()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse(&args) {
        Ok(args) => args,
        Err(problem) => {
            if !problem.is_empty() {
                eprintln!("infergate-envoy-drain: {problem}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    if args.ready {
        return match admin(args.admin_port, "GET", "/ready") {
            Ok((200, _)) => ExitCode::SUCCESS,
            Ok((status, body)) => {
                eprintln!("Envoy is not ready: {status} {}", body.trim());
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("Envoy's admin interface: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.max_wait_seconds);
    match admin(
        args.admin_port,
        "POST",
        "/drain_listeners?graceful&skip_exit",
    ) {
        Ok((200, _)) => eprintln!(
            "infergate-envoy-drain: draining for {} s",
            args.drain_seconds
        ),
        // Keep the Pod serving for the drain time all the same: that alone
        // lets the Service stop sending first.
        Ok((status, body)) => eprintln!(
            "infergate-envoy-drain: Envoy answered {status} to drain_listeners: {}",
            body.trim()
        ),
        Err(e) => eprintln!("infergate-envoy-drain: Envoy's admin interface: {e}"),
    }
    std::thread::sleep(Duration::from_secs(args.drain_seconds));
    loop {
        let active = admin(args.admin_port, "GET", "/stats?filter=downstream_rq_active")
            .map(|(_, body)| active_requests(&body))
            .unwrap_or(0);
        if active == 0 {
            break;
        }
        if Instant::now() >= deadline {
            eprintln!(
                "infergate-envoy-drain: {active} requests still active after {} s; stopping all the same",
                args.max_wait_seconds
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_requests_count_every_listener_but_the_admin_interface() {
        let stats = "http.admin.downstream_rq_active: 1\n\
                     http.listener-80.downstream_rq_active: 2\n\
                     http.listener-8080.downstream_rq_active: 3\n\
                     http.listener-80.downstream_rq_total: 40\n\
                     cluster.x.upstream_rq_active: 9\n";
        assert_eq!(active_requests(stats), 5);
        assert_eq!(active_requests(""), 0);
    }

    #[test]
    fn arguments_are_checked() {
        let args = |a: &[&str]| parse(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let ok = args(&["--admin-port", "19000", "--drain-seconds", "5"]).unwrap();
        assert_eq!(
            (ok.admin_port, ok.drain_seconds, ok.max_wait_seconds),
            (19000, 5, 13)
        );
        assert!(
            args(&["--drain-seconds", "5"])
                .unwrap_err()
                .contains("--admin-port")
        );
        assert!(
            args(&["--admin-port", "x"])
                .unwrap_err()
                .contains("whole number")
        );
        assert!(args(&["--admin-port", "1", "--drain-seconds", "1", "--later"]).is_err());
        let ready = args(&["--admin-port", "19000", "--ready"]).unwrap();
        assert!(ready.ready && ready.admin_port == 19000);
        assert!(
            args(&["--ready"]).is_err(),
            "the admin port is still required"
        );
    }
}
