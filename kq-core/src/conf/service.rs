//! go-zero's service blocks that kq reads: `Log`, `Telemetry`, `DevServer` and `Prometheus`.
//! The top level of the config file has them, and so may each `KqConf`, as go-queue's `KqConf`
//! embeds go-zero's `ServiceConf`; a top-level block wins.

use std::fmt;

use serde::Deserialize;

use super::keywords::{Batcher, LogEncoding, LogLevel};
use super::validate::Redacted;
use crate::error::InvalidConf;

/// go-zero's `Log` block, the keys kq reads. Logs go to stdout (go-zero's `console` mode).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct LogConf {
    /// `debug`, `info`, `error` or `severe`. `RUST_LOG`, when set, takes its place.
    pub level: LogLevel,
    /// `json` or `plain`.
    pub encoding: LogEncoding,
    /// Log each consumer's stat line once a minute.
    pub stat: bool,
}

impl Default for LogConf {
    fn default() -> Self {
        LogConf {
            level: LogLevel::default(),
            encoding: LogEncoding::default(),
            stat: true,
        }
    }
}

/// go-zero's `Telemetry` block: where traces are exported. Needs kq's `opentelemetry`
/// feature when `Endpoint` is set.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct TelemetryConf {
    /// The service name on every span; the service's `Name` when empty.
    pub name: String,
    /// The collector, `host:port` or `http://host:port`; no export when empty.
    pub endpoint: String,
    /// The share of new traces sampled, from 0 to 1; a continued trace keeps its parent's choice.
    pub sampler: f64,
    /// The exporter: `otlphttp`.
    pub batcher: Batcher,
    /// Headers sent with every export (an API key, for instance).
    pub otlp_headers: std::collections::BTreeMap<String, String>,
    /// The collector's path for traces.
    pub otlp_http_path: String,
    /// Export nothing even though `Endpoint` is set.
    pub disabled: bool,
}

impl Default for TelemetryConf {
    fn default() -> Self {
        TelemetryConf {
            name: String::new(),
            endpoint: String::new(),
            sampler: 1.0,
            batcher: Batcher::default(),
            otlp_headers: Default::default(),
            otlp_http_path: "/v1/traces".into(),
            disabled: false,
        }
    }
}

impl fmt::Debug for TelemetryConf {
    // Hand-written so that header values (API keys, tokens) never reach a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: std::collections::BTreeMap<_, _> = self
            .otlp_headers
            .iter()
            .map(|(name, value)| (name, Redacted(value)))
            .collect();
        f.debug_struct("TelemetryConf")
            .field("name", &self.name)
            .field("endpoint", &self.endpoint)
            .field("sampler", &self.sampler)
            .field("batcher", &self.batcher)
            .field("otlp_headers", &headers)
            .field("otlp_http_path", &self.otlp_http_path)
            .field("disabled", &self.disabled)
            .finish()
    }
}

impl TelemetryConf {
    /// The collector's `host:port`: `Endpoint` without `http://` or a trailing `/`.
    pub(crate) fn collector_address(&self) -> &str {
        let endpoint = self.endpoint.trim().trim_end_matches('/');
        endpoint.strip_prefix("http://").unwrap_or(endpoint)
    }

    /// Whether spans are exported at all.
    pub fn exports(&self) -> bool {
        !self.disabled && !self.endpoint.trim().is_empty()
    }

    /// Checks what serde cannot. Names the key at fault.
    pub fn validate(&self) -> Result<(), InvalidConf> {
        if !(0.0..=1.0).contains(&self.sampler) {
            return Err(InvalidConf::new(
                "Telemetry.Sampler",
                format!("must be between 0 and 1, got {}", self.sampler),
            ));
        }
        if !self.exports() {
            return Ok(());
        }
        let endpoint = self.endpoint.trim();
        if endpoint.starts_with("https://") {
            return Err(InvalidConf::new(
                "Telemetry.Endpoint",
                "must be plain HTTP (a collector or agent beside the service)",
            ));
        }
        if self.collector_address().contains('/') {
            // go-zero's Jaeger endpoints are URLs with a path; OTLP takes `OtlpHttpPath`.
            return Err(InvalidConf::new(
                "Telemetry.Endpoint",
                format!(
                    "must be `host:port`, got `{endpoint}`: the path is `OtlpHttpPath` \
                     (a Jaeger collector takes OTLP at port 4318)"
                ),
            ));
        }
        if !self.otlp_http_path.starts_with('/') {
            return Err(InvalidConf::new(
                "Telemetry.OtlpHttpPath",
                "must start with `/`",
            ));
        }
        // Last, so that an endpoint of the wrong form is named as such in every build.
        if !cfg!(feature = "opentelemetry") {
            return Err(InvalidConf::new(
                "Telemetry.Endpoint",
                "needs kq built with its `opentelemetry` feature",
            ));
        }
        Ok(())
    }
}

/// go-zero's `DevServer` block: where metrics, health and readiness are served.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct DevServerConf {
    /// Serve at all (go-zero's default: no).
    pub enabled: bool,
    /// The address to listen on.
    pub host: String,
    /// The port to listen on.
    pub port: u16,
    /// Prometheus metrics.
    pub metrics_path: String,
    /// Liveness: 200 while every consumer loop runs, 503 once one died or is stuck.
    pub health_path: String,
    /// Readiness (kq's key): 200 once every consumer joined its group and is fetching.
    pub ready_path: String,
}

impl Default for DevServerConf {
    fn default() -> Self {
        DevServerConf {
            enabled: false,
            host: "0.0.0.0".into(),
            port: 6060,
            metrics_path: "/metrics".into(),
            health_path: "/healthz".into(),
            ready_path: "/readyz".into(),
        }
    }
}

/// go-zero's `Prometheus` block: metrics only, on a port of their own.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct PrometheusConf {
    /// The address to listen on.
    pub host: String,
    /// The port; 0 (the default) means no Prometheus server.
    pub port: u16,
    /// The metrics path.
    pub path: String,
}

impl Default for PrometheusConf {
    fn default() -> Self {
        PrometheusConf {
            host: "0.0.0.0".into(),
            port: 0,
            path: "/metrics".into(),
        }
    }
}
