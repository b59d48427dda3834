//! `listen`: an IP address or a host name, with a port. A name is resolved when the daemon
//! starts, and the daemon listens on every address it resolves to (`localhost`: 127.0.0.1 and
//! ::1), so that clients reach it whichever of them they try first.

use std::net::{IpAddr, SocketAddr};

use anyhow::{bail, Context, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenAddr {
    /// An IP address, or a host name to resolve.
    host: String,
    port: u16,
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl ListenAddr {
    /// `127.0.0.1:8080`, `[::1]:8080`, `localhost:8080`, `ci.example.com:80`.
    pub fn parse(text: &str) -> Result<ListenAddr, String> {
        let shape = || {
            format!(
                "`{text}` is not an address to listen on: write HOST:PORT, e.g. 127.0.0.1:8080, \
                 [::1]:8080, localhost:8080 or 0.0.0.0:8080 (every interface)"
            )
        };
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(ListenAddr {
                host: addr.ip().to_string(),
                port: addr.port(),
            });
        }
        let (host, port) = text.rsplit_once(':').ok_or_else(shape)?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{}: `{port}` is not a port (0 to 65535)", shape()))?;
        let valid_name = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        // A bracket-less IPv6 address, or something else that is neither an address nor a name.
        if !valid_name || host.parse::<IpAddr>().is_ok() {
            return Err(shape());
        }
        Ok(ListenAddr {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// The host name, when the address is not an IP address.
    pub fn name(&self) -> Option<&str> {
        self.host.parse::<IpAddr>().is_err().then_some(&self.host)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The addresses to listen on: the IP address, or every address the name resolves to (in
    /// the resolver's order, without repeats).
    pub async fn resolve(&self) -> Result<Vec<SocketAddr>> {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, self.port)]);
        }
        let mut addrs: Vec<SocketAddr> = Vec::new();
        for addr in tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .with_context(|| format!("listen: cannot resolve the host name `{}`", self.host))?
        {
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
        if addrs.is_empty() {
            bail!(
                "listen: the host name `{}` resolves to no address",
                self.host
            );
        }
        Ok(addrs)
    }
}

/// The sockets the daemon listens on, and the `Host` headers its state changes may name.
pub struct Listening {
    listeners: Vec<(SocketAddr, tokio::net::TcpListener)>,
    pub hosts: Vec<String>,
}

/// Listens on every address `listen` resolves to. An address this machine does not have (::1
/// without IPv6) is skipped with a warning; any other failure (the port is taken) is an error.
pub async fn bind(listen: &ListenAddr, public_url: Option<&str>) -> Result<Listening> {
    let mut listeners = Vec::new();
    for addr in listen.resolve().await? {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => listeners.push((addr, listener)),
            Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => {
                tracing::warn!(%listen, address = %addr, error = %e, "cannot listen on one of the addresses the name resolves to; skipping it");
            }
            Err(e) => return Err(e).with_context(|| format!("cannot listen on {addr} ({listen})")),
        }
    }
    if listeners.is_empty() {
        bail!("cannot listen on {listen}: none of its addresses is available here");
    }
    let mut hosts: Vec<String> = Vec::new();
    for (addr, _) in &listeners {
        let for_addr = deploylite_server::AuthConfig::hosts_for(*addr, public_url);
        if for_addr.is_empty() {
            // Every interface, no public_url: any Host is taken.
            hosts.clear();
            break;
        }
        for host in for_addr {
            if !hosts.contains(&host) {
                hosts.push(host);
            }
        }
    }
    if let (Some(name), false) = (listen.name(), hosts.is_empty()) {
        // Clients call the daemon by the name it was told to listen on.
        let named = format!("{name}:{}", listen.port());
        if !hosts.contains(&named) {
            hosts.push(named);
        }
    }
    Ok(Listening { listeners, hosts })
}

impl Listening {
    /// Whether every address is a loopback address: `auth.anonymous_read`'s default.
    pub fn all_loopback(&self) -> bool {
        self.listeners
            .iter()
            .all(|(addr, _)| addr.ip().is_loopback())
    }

    /// `127.0.0.1:8094, [::1]:8094`, for the startup log.
    pub fn describe(&self) -> String {
        let addrs: Vec<String> = self.listeners.iter().map(|(a, _)| a.to_string()).collect();
        addrs.join(", ")
    }

    /// The sockets, to serve on each.
    pub fn into_listeners(self) -> Vec<tokio::net::TcpListener> {
        self.listeners.into_iter().map(|(_, l)| l).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_names() {
        let ok = |t: &str| ListenAddr::parse(t).map(|a| a.to_string());
        assert_eq!(ok("127.0.0.1:8080").as_deref(), Ok("127.0.0.1:8080"));
        assert_eq!(ok("[::1]:80").as_deref(), Ok("[::1]:80"));
        assert_eq!(ok("LocalHost:8094").as_deref(), Ok("localhost:8094"));
        assert_eq!(ok("ci.example.com:80").as_deref(), Ok("ci.example.com:80"));
        assert_eq!(
            ok("nope").unwrap_err(),
            "`nope` is not an address to listen on: write HOST:PORT, e.g. 127.0.0.1:8080, \
             [::1]:8080, localhost:8080 or 0.0.0.0:8080 (every interface)"
        );
        assert!(ok("localhost:99999")
            .unwrap_err()
            .ends_with(": `99999` is not a port (0 to 65535)"));
        assert!(ok("::1:80").is_err(), "IPv6 needs brackets");
        assert!(ok("a b:80").is_err());
        assert!(ok(":80").is_err());
    }

    #[tokio::test]
    async fn localhost_resolves_to_loopback_addresses() {
        let addrs = ListenAddr::parse("localhost:8094")
            .unwrap()
            .resolve()
            .await
            .unwrap();
        assert!(!addrs.is_empty());
        assert!(addrs
            .iter()
            .all(|a| a.ip().is_loopback() && a.port() == 8094));
    }
}
