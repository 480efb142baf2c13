//! The HTTP server of `DevServer` and `Prometheus`: metrics, health and readiness.

use std::sync::Arc;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use super::health::health;
use super::registry::{enable, render_metrics};
use crate::conf::DevServerConf;

/// Serves metrics, health and readiness on `listener` until the task is dropped, and turns
/// collection on.
pub async fn serve(listener: TcpListener, conf: DevServerConf) -> std::io::Result<()> {
    enable();
    let conf = Arc::new(conf);
    loop {
        let (stream, _) = listener.accept().await?;
        let conf = conf.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &conf).await {
                tracing::debug!(error = %e, "metrics request failed");
            }
        });
    }
}

/// Answers one HTTP/1.1 GET and closes the connection.
async fn answer(mut stream: TcpStream, conf: &DevServerConf) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&chunk[..n]);
    }
    let request = String::from_utf8_lossy(&request);
    let mut words = request.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = if method != "GET" {
        ("405 Method Not Allowed", "text/plain", String::new())
    } else if path == conf.metrics_path {
        (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            render_metrics(),
        )
    } else if path == conf.health_path || path == conf.ready_path {
        let health = health();
        let ok = if path == conf.health_path {
            health.live
        } else {
            health.ready
        };
        let status = if ok {
            "200 OK"
        } else {
            "503 Service Unavailable"
        };
        (status, "text/plain; charset=utf-8", health.detail)
    } else {
        ("404 Not Found", "text/plain", String::new())
    };
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
