//! `--metrics ADDR`: a service's metrics over plain HTTP, `GET /metrics`
//! only, for a Prometheus scraper.
//!
//! Plain HTTP because the text is read-only and carries no secret (counts,
//! kinds, modes, times); still, it binds only where it is told to, loopback
//! unless the address says otherwise.

use std::net::SocketAddr;

use axum::Router;
use axum::http::header;
use axum::routing::get;
use phaul_core::target::metrics::{CONTENT_TYPE, Metrics};
use tracing::info;

use crate::error::{Error, Result};

/// The address `--metrics` binds: `PORT` alone is loopback's, otherwise
/// `HOST:PORT` as given.
pub fn metrics_addr(arg: &str) -> Result<SocketAddr> {
    if let Ok(port) = arg.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    arg.parse().map_err(|_| Error::MetricsAddr(arg.to_owned()))
}

/// Binds `addr` and serves `metrics` at `GET /metrics` until `shutdown`
/// resolves. Returns the bound address (port 0 picks one) and the server's
/// future, to run beside the service.
pub async fn serve_metrics(
    addr: SocketAddr,
    metrics: Metrics,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(
    SocketAddr,
    impl std::future::Future<Output = std::io::Result<()>>,
)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::MetricsBind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| Error::MetricsBind { addr, source })?;
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let m = metrics.clone();
            async move { ([(header::CONTENT_TYPE, CONTENT_TYPE)], m.render()) }
        }),
    );
    info!(addr = %bound, "serving metrics at /metrics");
    let server = axum::serve(listener, app).with_graceful_shutdown(shutdown);
    Ok((bound, server.into_future()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_alone_is_loopback() {
        assert_eq!(
            metrics_addr("9100").unwrap(),
            "127.0.0.1:9100".parse().unwrap()
        );
        assert_eq!(
            metrics_addr("10.0.0.1:9100").unwrap(),
            "10.0.0.1:9100".parse().unwrap()
        );
        assert!(metrics_addr("nowhere").is_err());
    }

    #[tokio::test]
    async fn get_metrics_serves_the_text_format_and_nothing_else() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (addr, server) = serve_metrics(
            "127.0.0.1:0".parse().unwrap(),
            Metrics::default(),
            async move {
                let _ = stopped.await;
            },
        )
        .await
        .unwrap();
        let server = tokio::spawn(server);
        let get = |path: &'static str| async move {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            c.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
            let mut s = String::new();
            c.read_to_string(&mut s).await.unwrap();
            s
        };
        let ok = get("/metrics").await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(
            ok.to_lowercase()
                .contains("content-type: text/plain; version=0.0.4"),
            "{ok}"
        );
        assert!(ok.contains("phaul_migrations_running 0\n"), "{ok}");
        let other = get("/").await;
        assert!(other.starts_with("HTTP/1.1 404"), "{other}");
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    }
}
