//! Which `Origin` may open `/ws`: a browser page elsewhere must not ride a visitor's network
//! position (a server on a LAN or loopback) to join rooms.

use std::net::IpAddr;

/// An origin as `scheme://host[:port]`, lower case, default port left out; `None` for
/// anything but an http(s) origin (`null` included).
pub fn normalize(origin: &str) -> Option<String> {
    let url = url::Url::parse(origin).ok()?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return None;
    }
    Some(url.origin().ascii_serialization())
}

/// True when a WebSocket upgrade with this `Origin` (and `Host`) may proceed: no `Origin`
/// (not a browser), the page's own host, any loopback origin, or one of `allowed`
/// (normalized, or `*`).
pub fn allowed(origin: Option<&str>, host: Option<&str>, allowed: &[String]) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    if allowed.iter().any(|a| a == "*") {
        return true;
    }
    let Ok(url) = url::Url::parse(origin) else {
        return false;
    };
    if !matches!(url.scheme(), "http" | "https") {
        return false;
    }
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost" || d.ends_with(".localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    };
    if loopback {
        return true;
    }
    // Same origin: the host the browser asked for is the origin's host. The scheme is the
    // origin's own, since a TLS-terminating proxy may stand in front of plain HTTP.
    if let Some(host) = host {
        if let Ok(page) = url::Url::parse(&format!("{}://{host}", url.scheme())) {
            if page.host() == url.host()
                && page.port_or_known_default() == url.port_or_known_default()
            {
                return true;
            }
        }
    }
    let origin = url.origin().ascii_serialization();
    allowed
        .iter()
        .any(|a| normalize(a).is_some_and(|a| a == origin))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_origin_loopback_and_listed_origins_pass() {
        let none: Vec<String> = Vec::new();
        assert!(allowed(None, Some("example.org"), &none));
        assert!(allowed(
            Some("https://example.org"),
            Some("example.org"),
            &none
        ));
        assert!(allowed(
            Some("https://example.org"),
            Some("example.org:443"),
            &none
        ));
        assert!(allowed(
            Some("http://Example.org:8080"),
            Some("example.org:8080"),
            &none
        ));
        assert!(!allowed(
            Some("http://example.org:8081"),
            Some("example.org:8080"),
            &none
        ));
        assert!(!allowed(
            Some("https://evil.example"),
            Some("example.org"),
            &none
        ));
        assert!(!allowed(Some("https://evil.example"), None, &none));
        assert!(allowed(
            Some("http://localhost:3000"),
            Some("example.org"),
            &none
        ));
        assert!(allowed(
            Some("http://127.0.0.2:3000"),
            Some("example.org"),
            &none
        ));
        assert!(allowed(
            Some("http://[::1]:3000"),
            Some("example.org"),
            &none
        ));
        assert!(!allowed(Some("null"), Some("example.org"), &none));
        assert!(!allowed(Some("file://x"), Some("example.org"), &none));
        let list = vec!["https://app.example:8443".to_string()];
        assert!(allowed(Some("https://APP.example:8443"), Some("x"), &list));
        assert!(!allowed(Some("https://app.example"), Some("x"), &list));
        assert!(allowed(Some("null"), Some("x"), &["*".to_string()]));
        assert_eq!(
            normalize("https://a.example:443/").as_deref(),
            Some("https://a.example")
        );
        assert_eq!(normalize("null"), None);
    }
}
