//! What every request passes: the `Host` and `Origin` must be this
//! server's, and every `/api` request must carry the login token. Every
//! response gets the security headers, and never a CORS one.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::api::api_error;
use crate::error::{Error, Result};
use crate::server::Shared;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'; \
    base-uri 'none'; form-action 'none'";

/// A login token: 32 random bytes from the kernel, in hex.
pub fn random_token() -> Result<String> {
    use ring::rand::SecureRandom;
    let mut buf = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| Error::Random)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Reads a login token: at least 16 printable characters, from a file that
/// only its owner can read.
pub fn read_token_file(path: &Path) -> Result<String> {
    let read = |source| Error::TokenRead {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read)?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(Error::TokenPublic(path.to_path_buf()));
    }
    let text = std::fs::read_to_string(path).map_err(read)?;
    let token = text.trim();
    if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::TokenWeak(path.to_path_buf()));
    }
    Ok(token.to_string())
}

/// Equality whose time does not depend on where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The origins (`http://HOST:PORT`) a request may come from and the `Host`
/// values (`HOST:PORT`) it may name, for a server at `addr` that also
/// accepts `allow`.
pub(crate) fn origins(addr: SocketAddr, allow: &[String]) -> Result<(Vec<String>, Vec<String>)> {
    let port = addr.port();
    let mut origins = vec![format!("http://{addr}")];
    if addr.ip().is_loopback() {
        for h in ["localhost", "127.0.0.1", "[::1]"] {
            origins.push(format!("http://{h}:{port}"));
        }
    }
    for o in allow {
        let o = o.trim_end_matches('/');
        if !o.starts_with("http://") && !o.starts_with("https://") {
            return Err(Error::Origin(o.to_string()));
        }
        origins.push(o.to_string());
    }
    origins.sort();
    origins.dedup();
    let hosts = origins
        .iter()
        .filter_map(|o| o.split_once("://").map(|(_, h)| h.to_string()))
        .collect();
    Ok((origins, hosts))
}

/// Every request: the `Host` must name this server and an `Origin`, when
/// present, must be this server's; every response gets the security
/// headers (and never a CORS one).
pub(crate) async fn same_origin(
    State(app): State<Arc<Shared>>,
    req: Request,
    next: Next,
) -> Response {
    let host_ok = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|h| app.hosts.iter().any(|a| a.eq_ignore_ascii_case(h)));
    let origin_ok = match req.headers().get(header::ORIGIN) {
        None => true,
        Some(o) => o
            .to_str()
            .is_ok_and(|o| app.origins.iter().any(|a| a.eq_ignore_ascii_case(o))),
    };
    let mut resp = if !host_ok {
        api_error(
            StatusCode::FORBIDDEN,
            "this server is not reached by that host name",
        )
        .into_response()
    } else if !origin_ok {
        api_error(StatusCode::FORBIDDEN, "cross-origin requests are refused").into_response()
    } else {
        next.run(req).await
    };
    let h = resp.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    for (name, value) in [
        ("cross-origin-opener-policy", "same-origin"),
        ("cross-origin-resource-policy", "same-origin"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    resp
}

/// Every `/api` request: `Authorization: Bearer TOKEN`.
pub(crate) async fn require_token(
    State(app): State<Arc<Shared>>,
    req: Request,
    next: Next,
) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(t) if constant_time_eq(t.as_bytes(), app.cfg.token.as_bytes()) => next.run(req).await,
        _ => {
            let mut r = api_error(
                StatusCode::UNAUTHORIZED,
                "a valid token is needed (Authorization: Bearer TOKEN)",
            )
            .into_response();
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_servers_accept_their_own_names_and_nothing_else() {
        let (o, h) = origins("127.0.0.1:8080".parse().unwrap(), &[]).unwrap();
        assert!(o.contains(&"http://localhost:8080".to_string()));
        assert!(h.contains(&"[::1]:8080".to_string()));
        assert!(!o.iter().any(|x| x.contains("8081")));
        let (o, _) = origins(
            "10.0.0.1:80".parse().unwrap(),
            &["https://gui.example/".into()],
        )
        .unwrap();
        assert_eq!(o, ["http://10.0.0.1:80", "https://gui.example"]);
        assert!(matches!(
            origins("10.0.0.1:80".parse().unwrap(), &["gui.example".into()]),
            Err(Error::Origin(_))
        ));
    }

    #[test]
    fn tokens_compare_only_when_equal() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        let t = random_token().unwrap();
        assert_eq!(t.len(), 64);
        assert_ne!(t, random_token().unwrap());
    }
}
