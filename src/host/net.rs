//! Host facts the launcher and the ranks need: Python's `socket.getfqdn()` (MASTER_ADDR for
//! c10d/standalone, `host` in the failure summary), whether an address is this
//! machine, and which process holds a listening port (for the port-in-use error).

use std::ffi::CStr;
use std::net::{IpAddr, TcpListener, ToSocketAddrs};

/// This machine's hostname.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

/// Like Python's `socket.getfqdn()`: resolve the hostname to an address, reverse
/// it, and prefer a dotted name; otherwise the reverse name; otherwise the hostname.
pub fn fqdn() -> String {
    let host = hostname();
    let Some(addr) = (host.as_str(), 0)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
    else {
        return host;
    };
    let name = reverse_lookup(addr.ip()).unwrap_or_else(|| host.clone());
    if name.contains('.') || !host.contains('.') {
        name
    } else {
        host
    }
}

fn reverse_lookup(ip: IpAddr) -> Option<String> {
    let sa: nix::sys::socket::SockaddrStorage = std::net::SocketAddr::new(ip, 0).into();
    use nix::sys::socket::SockaddrLike;
    let mut buf = [0 as libc::c_char; 1025];
    // SAFETY: sa points to a valid sockaddr of the given length; buf is writable.
    let rc = unsafe {
        libc::getnameinfo(
            sa.as_ptr(),
            sa.len(),
            buf.as_mut_ptr(),
            buf.len() as libc::socklen_t,
            std::ptr::null_mut(),
            0,
            libc::NI_NAMEREQD,
        )
    };
    if rc != 0 {
        return None;
    }
    // SAFETY: getnameinfo wrote a NUL-terminated string into buf.
    Some(
        unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// True when `host` names this machine: localhost, a loopback address, our
/// hostname/FQDN, or an address we can bind.
pub fn is_local_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    if h == "localhost" || h == hostname() || h == fqdn() {
        return true;
    }
    match h.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback() || TcpListener::bind((ip, 0)).is_ok(),
        Err(_) => false,
    }
}

/// The pid and command name of the process listening on TCP `port`, if /proc shows it.
pub fn port_holder(port: u16) -> Option<(u32, String)> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                continue; // not LISTEN
            }
            let lport = f[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if lport == Some(port) {
                inodes.push(format!("socket:[{}]", f[9]));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for proc_entry in std::fs::read_dir("/proc").ok()?.filter_map(Result::ok) {
        let Ok(pid) = proc_entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(proc_entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.filter_map(Result::ok) {
            if let Ok(target) = std::fs::read_link(fd.path())
                && inodes.iter().any(|i| target.as_os_str() == i.as_str())
            {
                let comm = std::fs::read_to_string(proc_entry.path().join("comm"))
                    .unwrap_or_default()
                    .trim()
                    .to_string();
                return Some((pid, comm));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_our_own_listener() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let (pid, _) = port_holder(port).expect("listener visible in /proc");
        assert_eq!(pid, std::process::id());
    }

    #[test]
    fn local_hosts() {
        assert!(is_local_host("localhost"));
        assert!(is_local_host("127.0.0.1"));
        assert!(is_local_host(&hostname()));
        assert!(!is_local_host("192.0.2.1"));
    }
}
