//! What the cluster benchmark reads from `/proc` to say where a run's CPU
//! went: each process's CPU ticks, the whole machine's, the `beam.smp` of a
//! RabbitMQ node, the PostgreSQL backends serving given processes, and the
//! peers of a process's TCP connections.
//!
//! Processes are found by what `/proc` says of them, not by their names
//! alone: the shared PostgreSQL and RabbitMQ on this machine serve other
//! work too, and only the processes of the run belong in its figures.

use std::collections::{HashMap, HashSet};

/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`): 100 on Linux
/// whatever the kernel's own tick rate, so no `sysconf` is needed.
pub const TICKS_PER_SECOND: f64 = 100.0;

/// CPU ticks (user + system, all threads) of each process that still exists.
pub fn ticks(pids: &[u32]) -> HashMap<u32, u64> {
    pids.iter()
        .filter_map(|&pid| Some((pid, process_ticks(pid)?)))
        .collect()
}

/// CPU seconds between two [`ticks`] of one group of processes. A process
/// found only in `after` started during the run and counts from zero; one
/// gone by then is left out (its last ticks cannot be read).
pub fn seconds_between(before: &HashMap<u32, u64>, after: &HashMap<u32, u64>) -> f64 {
    let ticks: u64 = after
        .iter()
        .map(|(pid, now)| now.saturating_sub(before.get(pid).copied().unwrap_or(0)))
        .sum();
    ticks as f64 / TICKS_PER_SECOND
}

/// `utime + stime` of `/proc/<pid>/stat`, fields 14 and 15, counted after
/// the command name's closing parenthesis (the name may hold spaces).
fn process_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The machine's busy and total ticks over all cores, from `/proc/stat`
/// (busy: everything but idle and iowait).
pub fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let values: Vec<u64> = line
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already
    // in user and nice).
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3)? + values.get(4)?;
    Some((total - idle, total))
}

/// Every process's id with its `comm` and the arguments of its command line.
fn processes() -> Vec<(u32, String, Vec<String>)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args = cmdline
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            Some((pid, comm.trim().to_owned(), args))
        })
        .collect()
}

/// The `beam.smp` running RabbitMQ node `node` (`name@host`). RabbitMQ
/// 3.10 passes the node's name in the environment (`RABBITMQ_NODENAME`),
/// not the arguments; `rabbitmqctl` runs a `beam.smp` with the same
/// environment, so the server is the one booting `rabbit` (`-s rabbit boot`).
pub fn beam_of(node: &str) -> Option<u32> {
    let wanted = format!("RABBITMQ_NODENAME={node}");
    processes().into_iter().find_map(|(pid, comm, args)| {
        let server = args.windows(2).any(|w| w[0] == "rabbit" && w[1] == "boot");
        if comm != "beam.smp" || !server {
            return None;
        }
        let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
        environ
            .split(|b| *b == 0)
            .any(|var| var == wanted.as_bytes())
            .then_some(pid)
    })
}

/// The PostgreSQL backends serving the connections `clients` made to
/// `pg_port`: a backend's title says its client's address and port
/// (`postgres: user db 127.0.0.1(54321) idle`).
pub fn postgres_backends_of(clients: &[u32], pg_port: u16) -> Vec<u32> {
    let ports: HashSet<u16> = clients
        .iter()
        .flat_map(|&pid| connections(pid))
        .filter(|c| c.remote_port == pg_port)
        .map(|c| c.local_port)
        .collect();
    if ports.is_empty() {
        return Vec::new();
    }
    processes()
        .into_iter()
        .filter(|(_, comm, args)| {
            comm == "postgres"
                && args.iter().any(|a| {
                    ports
                        .iter()
                        .any(|port| a.contains(&format!("127.0.0.1({port})")))
                })
        })
        .map(|(pid, _, _)| pid)
        .collect()
}

/// One TCP connection of a process, by ports (everything here is loopback).
#[derive(Debug, Clone, Copy)]
pub struct Connection {
    /// The process's own port.
    pub local_port: u16,
    /// The peer's port.
    pub remote_port: u16,
}

/// The TCP connections process `pid` holds: its socket inodes matched to
/// the rows of `/proc/<pid>/net/tcp` and `tcp6`.
pub fn connections(pid: u32) -> Vec<Connection> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let inodes: HashSet<String> = fds
        .filter_map(|fd| {
            let target = std::fs::read_link(fd.ok()?.path()).ok()?;
            let target = target.to_string_lossy().into_owned();
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .collect();
    let mut found = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(remote), Some(inode)) =
                (fields.get(1), fields.get(2), fields.get(9))
            else {
                continue;
            };
            let (Some(local_port), Some(remote_port)) = (port_of(local), port_of(remote)) else {
                continue;
            };
            // A listening socket has no peer (port 0).
            if remote_port != 0 && inodes.contains(*inode) {
                found.push(Connection {
                    local_port,
                    remote_port,
                });
            }
        }
    }
    found
}

/// The port of an `ADDR:PORT` of `/proc/net/tcp` (hexadecimal).
fn port_of(address: &str) -> Option<u16> {
    u16::from_str_radix(address.rsplit(':').next()?, 16).ok()
}

/// The port of a URL's authority (`scheme://user@host:port/…`), if it has one.
pub fn url_port(url: &str) -> Option<u16> {
    let authority = url.split_once("://")?.1.split(['/', '?']).next()?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    host.rsplit_once(':')?.1.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_ticks() {
        let me = std::process::id();
        assert!(ticks(&[me]).contains_key(&me));
        let (busy, total) = machine_ticks().expect("/proc/stat");
        assert!(busy <= total);
    }

    #[test]
    fn url_ports() {
        assert_eq!(
            url_port("postgres://postgres@127.0.0.1:5432/test"),
            Some(5432)
        );
        assert_eq!(url_port("amqp://g:p@127.0.0.1:5673/%2f"), Some(5673));
        assert_eq!(url_port("amqp://localhost/%2f"), None);
    }
}
