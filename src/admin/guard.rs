//! Who the admin API obeys. It is reachable from the machine it runs on, so from every
//! browser on that machine too: a web page can make a browser send a cross-site POST
//! (no preflight for `text/plain`), or point a name of its own at 127.0.0.1 (DNS
//! rebinding). Invariant: an operation runs only for a request that no browser sends
//! on a page's behalf: JSON content type, no foreign `Origin` or `Sec-Fetch-Site`, a
//! `Host` that names the admin listener, and the token when one is configured.
//! `/metrics` and the health checks stay open to scrapers and load balancers.

use pingora::http::RequestHeader;

use crate::config::ServerSection;

/// Why a request was refused: the status and a message saying what to do.
pub struct Refusal(pub u16, pub String);

/// Reads that scrapers and load balancers make without credentials.
pub fn is_open(path: &str) -> bool {
    matches!(path, "/metrics" | "/healthz" | "/health" | "/readyz")
}

/// Checks a request for an operation (anything but the open reads).
pub fn check(req: &RequestHeader, server: &ServerSection) -> Result<(), Refusal> {
    let headers = &req.headers;
    let text = |name: &str| {
        headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    if let Some(host) = text("host") {
        if !allowed_host(&host, server) {
            return Err(Refusal(
                421,
                format!(
                    "the admin API does not answer for Host `{host}`: use its address, \
                     localhost, or add the name to server.admin_hosts"
                ),
            ));
        }
    }
    if let Some(site) = text("sec-fetch-site") {
        if site != "same-origin" && site != "none" {
            return Err(Refusal(
                403,
                format!("cross-site request refused (Sec-Fetch-Site: {site})"),
            ));
        }
    }
    if let Some(origin) = text("origin") {
        let host = origin
            .split_once("://")
            .map_or(origin.as_str(), |(_, rest)| rest);
        if !allowed_host(host, server) {
            return Err(Refusal(
                403,
                format!("cross-site request refused (Origin: {origin})"),
            ));
        }
    }
    if req.method == http::Method::POST {
        let json = text("content-type").is_some_and(|ct| {
            ct.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
        if !json {
            return Err(Refusal(
                415,
                "operations take Content-Type: application/json (the CLI sends it)".into(),
            ));
        }
    }
    if !server.admin_token_file.is_empty() {
        let expected = crate::config::read_token(&server.admin_token_file).map_err(|e| {
            Refusal(
                503,
                format!("the admin token cannot be read, so nothing is allowed: {e}"),
            )
        })?;
        let given = text("authorization");
        let given = given.as_deref().and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| constant_time_eq(g.trim().as_bytes(), expected.as_bytes())) {
            return Err(Refusal(
                401,
                "this admin API needs `Authorization: Bearer <token>` (server.admin_token_file; \
                 the CLI takes --token-file)"
                    .into(),
            ));
        }
    }
    Ok(())
}

/// The admin listener's own address, loopback names, and `server.admin_hosts`, with or
/// without a port.
fn allowed_host(host: &str, server: &ServerSection) -> bool {
    let host = host.trim().to_ascii_lowercase();
    let bare = strip_port(&host);
    let own = server.admin_listen.to_ascii_lowercase();
    host == own
        || bare == strip_port(&own)
        || matches!(bare, "localhost" | "127.0.0.1" | "[::1]" | "::1")
        || server
            .admin_hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(&host) || h.eq_ignore_ascii_case(bare))
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // `[v6]` or `[v6]:port`: the bracketed address.
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.contains(':') => {
            name
        }
        _ => host,
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> ServerSection {
        ServerSection {
            admin_listen: "10.0.0.5:6085".into(),
            admin_hosts: vec!["fg-admin.internal".into()],
            ..ServerSection::default()
        }
    }

    fn req(method: &str, pairs: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build(method, b"/purge", None).unwrap();
        for (k, v) in pairs {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    const JSON: (&str, &str) = ("content-type", "application/json");

    #[test]
    fn hosts() {
        let s = server();
        for ok in [
            "10.0.0.5:6085",
            "10.0.0.5",
            "localhost:6085",
            "127.0.0.1",
            "[::1]:6085",
            "FG-admin.internal",
        ] {
            assert!(allowed_host(ok, &s), "{ok}");
        }
        for bad in ["evil.example", "evil.example:6085", "10.0.0.6:6085"] {
            assert!(!allowed_host(bad, &s), "{bad}");
        }
    }

    #[test]
    fn browser_requests_are_refused() {
        let s = server();
        assert!(check(&req("POST", &[JSON, ("host", "127.0.0.1:6085")]), &s).is_ok());
        let refused = |pairs: &[(&str, &str)]| check(&req("POST", pairs), &s).err().map(|r| r.0);
        assert_eq!(refused(&[("content-type", "text/plain")]), Some(415));
        assert_eq!(refused(&[]), Some(415));
        assert_eq!(
            refused(&[JSON, ("origin", "https://evil.example")]),
            Some(403)
        );
        assert_eq!(
            refused(&[JSON, ("sec-fetch-site", "cross-site")]),
            Some(403)
        );
        assert_eq!(
            refused(&[JSON, ("host", "rebound.evil.example")]),
            Some(421)
        );
        assert_eq!(refused(&[JSON, ("origin", "http://127.0.0.1:6085")]), None);
    }

    #[test]
    fn the_token_when_configured() {
        let dir = std::env::temp_dir().join(format!("fg-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "0123456789abcdef-secret\n").unwrap();
        let s = ServerSection {
            admin_token_file: file.display().to_string(),
            ..server()
        };
        assert_eq!(
            check(&req("POST", &[JSON]), &s).err().map(|r| r.0),
            Some(401)
        );
        assert_eq!(
            check(&req("POST", &[JSON, ("authorization", "Bearer wrong")]), &s)
                .err()
                .map(|r| r.0),
            Some(401)
        );
        assert!(check(
            &req(
                "POST",
                &[JSON, ("authorization", "Bearer 0123456789abcdef-secret")]
            ),
            &s
        )
        .is_ok());
    }
}
