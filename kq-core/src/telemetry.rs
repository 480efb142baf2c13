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
/// Fails when a subscriber is already installed or the exporter cannot be built (a
/// `Telemetry.CaFile` that holds no certificate, for one).
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
    use std::sync::atomic::{AtomicBool, Ordering};
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
    use crate::error::InvalidConf;

    /// How long one export may take, its retries included (OpenTelemetry's default), and so
    /// one request to the collector, connecting included.
    const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

    /// A tracer provider exporting to the collector that `conf` names, in batches, and the
    /// layer that feeds it every span at info level and above, and every message's span.
    pub(super) fn spans(
        conf: &TelemetryConf,
        service: &str,
    ) -> Result<(SdkTracerProvider, BoxedLayer), String> {
        let collector = conf.collector().map_err(|e| e.to_string())?;
        let url = collector.url(&conf.otlp_http_path);
        let client = ExportClient::new(conf, url.clone())?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
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

    /// The exporter's HTTP client: reqwest's blocking client, on the batch exporter's own
    /// thread, which keeps its connection to the collector open from one batch to the next.
    /// It logs when exports start failing, with the cause, and when they work again: the
    /// exporter reports nothing without OpenTelemetry's internal logs, and with them no more
    /// than "network error".
    #[derive(Debug)]
    struct ExportClient {
        client: reqwest::blocking::Client,
        url: String,
        failing: AtomicBool,
    }

    impl ExportClient {
        fn new(conf: &TelemetryConf, url: String) -> Result<ExportClient, String> {
            let roots = if conf.ca_file.is_empty() {
                None
            } else {
                Some(certificates(&conf.ca_file).map_err(|e| e.to_string())?)
            };
            // The blocking client runs a runtime of its own, which panics when it is set up
            // inside another runtime's thread; `init` may be called from async code.
            let client = std::thread::Builder::new()
                .name("kq-otlp-client".into())
                .spawn(move || {
                    let builder = reqwest::blocking::Client::builder()
                        .timeout(EXPORT_TIMEOUT)
                        .connect_timeout(EXPORT_TIMEOUT)
                        // A collector has no reason to redirect, and a redirect would carry
                        // `OtlpHeaders` (API keys) to wherever it points.
                        .redirect(reqwest::redirect::Policy::none());
                    match roots {
                        Some(roots) => builder.tls_certs_only(roots),
                        None => builder,
                    }
                    .build()
                })
                .map_err(|e| client_error(&e))?
                .join()
                .map_err(|_| "`Telemetry`: setting up the HTTP client panicked".to_owned())?
                .map_err(|e| client_error(&e))?;
            Ok(ExportClient {
                client,
                url,
                failing: AtomicBool::new(false),
            })
        }
    }

    fn client_error(e: &dyn std::error::Error) -> String {
        format!("`Telemetry`: cannot set up the HTTP client: {}", causes(e))
    }

    /// The certificates of the PEM file at `path`.
    fn certificates(path: &str) -> Result<Vec<reqwest::Certificate>, InvalidConf> {
        let pem = std::fs::read(path).map_err(|e| {
            InvalidConf::new(
                "Telemetry.CaFile",
                format!("cannot be read from `{path}`: {e}"),
            )
        })?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            InvalidConf::new(
                "Telemetry.CaFile",
                format!("`{path}` is not a PEM certificate: {}", causes(&e)),
            )
        })?;
        if certificates.is_empty() {
            return Err(InvalidConf::new(
                "Telemetry.CaFile",
                format!("`{path}` holds no PEM certificate"),
            ));
        }
        Ok(certificates)
    }

    /// An error and its causes, where a TLS failure says what failed (reqwest's own message
    /// names only the URL).
    fn causes(e: &dyn std::error::Error) -> String {
        let mut text = e.to_string();
        let mut source = e.source();
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            // Some errors repeat their cause's text in their own.
            if !text.contains(&cause_text) {
                text.push_str(": ");
                text.push_str(&cause_text);
            }
            source = cause.source();
        }
        text
    }

    #[async_trait::async_trait]
    impl HttpClient for ExportClient {
        async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
            let result = self.client.send_bytes(request).await;
            let problem = match &result {
                Ok(response) if response.status().is_success() => None,
                Ok(response) => Some(format!("the collector answered {}", response.status())),
                Err(e) => Some(causes(e.as_ref())),
            };
            match problem {
                Some(problem) => {
                    if !self.failing.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            collector = %self.url,
                            error = %problem,
                            "span export failed (the batch is retried, then dropped); further \
                             failures are not logged until an export succeeds"
                        );
                    }
                }
                None => {
                    if self.failing.swap(false, Ordering::Relaxed) {
                        tracing::info!(collector = %self.url, "span export works again");
                    }
                }
            }
            result
        }
    }
}
