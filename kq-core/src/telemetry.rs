//! Setting a service up to be seen: the `tracing` subscriber that go-zero's `Log` block
//! describes, and, with the `opentelemetry` feature, the export of spans to the collector
//! that its `Telemetry` block names.
//!
//! `kq::main!` calls [`init`] once the config is loaded; a service with its own `main` may call
//! it too, or install its own subscriber instead.

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::prelude::*;
use tracing_subscriber::Layer;

use crate::conf::{LogConf, LogEncoding, LogLevel, TelemetryConf};

/// What [`init`] set up. Dropping it flushes the spans not yet exported.
#[must_use = "dropping it stops the span export"]
pub struct Telemetry {
    #[cfg(feature = "opentelemetry")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        #[cfg(feature = "opentelemetry")]
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.shutdown() {
                eprintln!("kq: flushing the last spans failed: {e}");
            }
        }
    }
}

/// Installs the global `tracing` subscriber: log lines on stdout at `log.level` (or as
/// `RUST_LOG` says) in `log.encoding`, and, when `telemetry` has an endpoint, every span
/// exported there as `service`.
///
/// Fails when a subscriber is already installed or the exporter cannot be built.
pub fn init(
    log: &LogConf,
    telemetry: Option<&TelemetryConf>,
    service: &str,
) -> Result<Telemetry, String> {
    let output = match log.encoding {
        LogEncoding::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
        LogEncoding::Plain => tracing_subscriber::fmt::layer().boxed(),
    };
    let (guard, export) = span_export(telemetry, service)?;
    let mut layers = vec![output.with_filter(log_filter(log)).boxed()];
    layers.extend(export);
    tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .map_err(|e| format!("cannot install the tracing subscriber: {e}"))?;
    Ok(guard)
}

type BoxedLayer = Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>;

/// The span export that `telemetry` asks for, if any, and the layer feeding it.
fn span_export(
    telemetry: Option<&TelemetryConf>,
    service: &str,
) -> Result<(Telemetry, Option<BoxedLayer>), String> {
    let nothing = Telemetry {
        #[cfg(feature = "opentelemetry")]
        provider: None,
    };
    let Some(conf) = telemetry.filter(|conf| conf.exports()) else {
        return Ok((nothing, None));
    };
    conf.validate().map_err(|e| e.to_string())?;
    #[cfg(feature = "opentelemetry")]
    {
        let (provider, layer) = export::spans(conf, service)?;
        Ok((
            Telemetry {
                provider: Some(provider),
            },
            Some(layer),
        ))
    }
    #[cfg(not(feature = "opentelemetry"))]
    {
        // `validate` refuses an endpoint without the feature.
        let _ = service;
        Ok((nothing, None))
    }
}

/// The log lines' filter: `RUST_LOG` when it is set and valid, otherwise `Level`; the stat
/// lines only when `Stat` is on.
fn log_filter(log: &LogConf) -> Targets {
    let level = match log.level {
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Info => LevelFilter::INFO,
        // go-zero has no warning level: its `error` shows what needs attention.
        LogLevel::Error => LevelFilter::WARN,
        LogLevel::Severe => LevelFilter::ERROR,
    };
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|spec| spec.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(level));
    if log.stat {
        filter
    } else {
        filter.with_target("kq::stat", LevelFilter::OFF)
    }
}

#[cfg(feature = "opentelemetry")]
mod export {
    use std::io::{Read as _, Write as _};
    use std::net::{TcpStream, ToSocketAddrs as _};
    use std::time::Duration;

    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
    use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
    use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
    use opentelemetry_sdk::Resource;
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::Layer;

    use super::BoxedLayer;
    use crate::conf::TelemetryConf;

    /// How long one export may take, connecting included.
    const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

    /// A tracer provider exporting to `conf.endpoint` in batches, and the layer that feeds it
    /// every span at info level and above, and every message's span.
    pub(super) fn spans(
        conf: &TelemetryConf,
        service: &str,
    ) -> Result<(SdkTracerProvider, BoxedLayer), String> {
        let url = format!("http://{}{}", conf.collector_address(), conf.otlp_http_path);
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(BlockingHttp)
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url)
            .with_timeout(EXPORT_TIMEOUT)
            .with_headers(conf.otlp_headers.clone().into_iter().collect())
            .build()
            .map_err(|e| format!("`Telemetry`: cannot build the exporter: {e}"))?;
        let name = if conf.name.is_empty() {
            service
        } else {
            &conf.name
        };
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                conf.sampler,
            ))))
            .with_resource(
                Resource::builder()
                    .with_service_name(name.to_owned())
                    .build(),
            )
            .build();
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        opentelemetry::global::set_tracer_provider(provider.clone());
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("kq"))
            .with_filter(
                Targets::new()
                    .with_default(LevelFilter::INFO)
                    .with_target(crate::trace::CONSUME_TARGET, LevelFilter::DEBUG),
            )
            .boxed();
        Ok((provider, layer))
    }

    /// A plain HTTP/1.1 client for the exporter. The batch exporter runs on its own thread
    /// outside any async runtime, so blocking I/O is right here, and it keeps an HTTP stack
    /// out of the dependencies.
    #[derive(Debug)]
    struct BlockingHttp;

    #[async_trait::async_trait]
    impl HttpClient for BlockingHttp {
        async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
            let uri = request.uri();
            let host = uri.host().ok_or("the endpoint has no host")?;
            let port = uri.port_u16().unwrap_or(80);
            let address = (host, port)
                .to_socket_addrs()?
                .next()
                .ok_or_else(|| format!("{host} has no address"))?;
            let mut stream = TcpStream::connect_timeout(&address, EXPORT_TIMEOUT)?;
            stream.set_read_timeout(Some(EXPORT_TIMEOUT))?;
            stream.set_write_timeout(Some(EXPORT_TIMEOUT))?;

            let path = uri.path_and_query().map_or("/", |p| p.as_str());
            let mut head = format!(
                "{} {path} HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-length: {}\r\nconnection: close\r\n",
                request.method(),
                request.body().len()
            );
            for (name, value) in request.headers() {
                head.push_str(name.as_str());
                head.push_str(": ");
                head.push_str(value.to_str()?);
                head.push_str("\r\n");
            }
            head.push_str("\r\n");
            stream.write_all(head.as_bytes())?;
            stream.write_all(request.body())?;

            // `connection: close`: the response ends where the stream does.
            let mut raw = Vec::new();
            stream.take(4 << 20).read_to_end(&mut raw)?;
            parse_response(&raw)
        }
    }

    /// The status and body of a raw HTTP/1.1 response (a chunked body is dropped: the
    /// exporter only needs the status).
    fn parse_response(raw: &[u8]) -> Result<Response<Bytes>, HttpError> {
        let end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or("the collector's response has no end of headers")?;
        let head = std::str::from_utf8(&raw[..end])?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or("the collector's response has no status")?;
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        let body = if chunked {
            Bytes::new()
        } else {
            Bytes::copy_from_slice(&raw[end + 4..])
        };
        Ok(Response::builder().status(status).body(body)?)
    }
}
