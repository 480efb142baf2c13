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
    /// The collector: `host:port`, `http://host:port` or `https://host:port`, an IPv6 address
    /// in brackets (`[::1]:4318`); without a port, the scheme's (80 or 443). No export when
    /// empty.
    pub endpoint: String,
    /// The share of new traces sampled, from 0 to 1; a continued trace keeps its parent's choice.
    pub sampler: f64,
    /// The exporter: `otlphttp`.
    pub batcher: Batcher,
    /// Headers sent with every export (an API key, for instance).
    pub otlp_headers: std::collections::BTreeMap<String, String>,
    /// The collector's path for traces.
    pub otlp_http_path: String,
    /// HTTPS to an `Endpoint` given as `host:port` (go-zero's key); the collector's certificate
    /// is verified against the system's certificate authorities, or `CaFile`.
    pub otlp_http_secure: bool,
    /// A PEM file of the certificate authorities that signed the collector's certificate,
    /// trusted in place of the system's; turns HTTPS on (kq's key, as `KqConf` has it).
    pub ca_file: String,
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
            otlp_http_secure: false,
            ca_file: String::new(),
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
            .field("otlp_http_secure", &self.otlp_http_secure)
            .field("ca_file", &self.ca_file)
            .field("disabled", &self.disabled)
            .finish()
    }
}

/// The collector that `Endpoint`, `OtlpHttpSecure` and `CaFile` name together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Collector<'a> {
    /// HTTPS rather than plain HTTP.
    pub https: bool,
    /// `host:port`, `host` or `[ipv6]:port`, as written.
    pub authority: &'a str,
}

impl Collector<'_> {
    /// The URL that spans are posted to.
    #[cfg(feature = "opentelemetry")]
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.authority)
    }
}

impl TelemetryConf {
    /// Whether spans are exported at all.
    pub fn exports(&self) -> bool {
        !self.disabled && !self.endpoint.trim().is_empty()
    }

    /// The collector that spans go to. Names the key at fault when `Endpoint` is not of a
    /// form kq takes, or when the keys contradict one another.
    pub(crate) fn collector(&self) -> Result<Collector<'_>, InvalidConf> {
        let endpoint = self.endpoint.trim();
        let (scheme, rest) = match endpoint.split_once("://") {
            Some((scheme, rest)) => (Some(scheme.to_ascii_lowercase()), rest),
            None => (None, endpoint),
        };
        let https = match scheme.as_deref() {
            None => self.otlp_http_secure || !self.ca_file.is_empty(),
            Some("https") => true,
            // Refused rather than one key silently winning: each of them asks for TLS, and
            // the headers would otherwise travel in clear text.
            Some("http") if self.otlp_http_secure => {
                return Err(InvalidConf::new(
                    "Telemetry.OtlpHttpSecure",
                    "asks for HTTPS while `Endpoint` says `http://`",
                ))
            }
            Some("http") if !self.ca_file.is_empty() => {
                return Err(InvalidConf::new(
                    "Telemetry.CaFile",
                    "asks for HTTPS while `Endpoint` says `http://`",
                ))
            }
            Some("http") => false,
            Some(other) => {
                return Err(InvalidConf::new(
                    "Telemetry.Endpoint",
                    format!("must start with `http://`, `https://` or the host, got `{other}://`"),
                ))
            }
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#']) {
            // go-zero's Jaeger endpoints are URLs with a path; OTLP takes `OtlpHttpPath`.
            return Err(InvalidConf::new(
                "Telemetry.Endpoint",
                format!(
                    "must be `host:port`, got `{endpoint}`: the path is `OtlpHttpPath` \
                     (a Jaeger collector takes OTLP at port 4318)"
                ),
            ));
        }
        check_authority(authority).map_err(|problem| {
            InvalidConf::new(
                "Telemetry.Endpoint",
                format!("must be `host:port`, got `{endpoint}`: {problem}"),
            )
        })?;
        Ok(Collector { https, authority })
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
        self.collector()?;
        if !self.otlp_http_path.starts_with('/') {
            return Err(InvalidConf::new(
                "Telemetry.OtlpHttpPath",
                "must start with `/`",
            ));
        }
        if !self.ca_file.is_empty() {
            std::fs::File::open(&self.ca_file).map_err(|e| {
                InvalidConf::new(
                    "Telemetry.CaFile",
                    format!("cannot be read from `{}`: {e}", self.ca_file),
                )
            })?;
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

/// Checks an endpoint's `host:port` (the port optional, an IPv6 host in brackets); says what
/// is wrong with it.
fn check_authority(authority: &str) -> Result<(), String> {
    if authority.contains('@') {
        return Err("credentials go in `OtlpHeaders`".into());
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (address, after) = bracketed
            .split_once(']')
            .ok_or("an IPv6 address ends with `]`")?;
        if address.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("`{address}` is not an IPv6 address"));
        }
        match after {
            "" => (address, None),
            _ => (
                address,
                Some(after.strip_prefix(':').ok_or("a port follows `]:`")?),
            ),
        }
    } else {
        match authority.split_once(':') {
            Some((_, port)) if port.contains(':') => {
                return Err("an IPv6 address goes in brackets, as in `[::1]:4318`".into())
            }
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("the host is missing".into());
    }
    if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
    {
        return Err(format!("`{host}` is not a host name or address"));
    }
    if let Some(port) = port {
        let digits = !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
        if !digits || !matches!(port.parse::<u16>(), Ok(1..)) {
            return Err(format!("`{port}` is not a port"));
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn telemetry(endpoint: &str) -> TelemetryConf {
        TelemetryConf {
            endpoint: endpoint.into(),
            ..TelemetryConf::default()
        }
    }

    fn collector(conf: &TelemetryConf) -> Result<(bool, &str), InvalidConf> {
        conf.collector()
            .map(|collector| (collector.https, collector.authority))
    }

    #[test]
    fn endpoints_name_the_scheme_and_the_collector() {
        for (endpoint, https, authority) in [
            ("otel:4318", false, "otel:4318"),
            ("http://otel:4318", false, "otel:4318"),
            ("https://otel:4318", true, "otel:4318"),
            ("HTTPS://otel:4318/", true, "otel:4318"),
            (" 127.0.0.1:4318 ", false, "127.0.0.1:4318"),
            ("[::1]:4318", false, "[::1]:4318"),
            ("http://[::1]:4318", false, "[::1]:4318"),
            ("https://[fe80::1]", true, "[fe80::1]"),
            (
                "https://api.collector.example",
                true,
                "api.collector.example",
            ),
        ] {
            assert_eq!(
                collector(&telemetry(endpoint)),
                Ok((https, authority)),
                "{endpoint}"
            );
        }
    }

    #[test]
    fn otlp_http_secure_and_ca_file_turn_https_on_for_host_and_port() {
        let secure = TelemetryConf {
            otlp_http_secure: true,
            ..telemetry("otel:4318")
        };
        assert_eq!(collector(&secure), Ok((true, "otel:4318")));
        let ca = TelemetryConf {
            ca_file: "/etc/kq/otel-ca.pem".into(),
            ..telemetry("[::1]:4318")
        };
        assert_eq!(collector(&ca), Ok((true, "[::1]:4318")));
        #[cfg(feature = "opentelemetry")]
        assert_eq!(
            ca.collector().map(|c| c.url("/v1/traces")),
            Ok("https://[::1]:4318/v1/traces".to_owned())
        );
    }

    #[test]
    fn http_with_a_key_asking_for_https_is_refused() {
        let secure = TelemetryConf {
            otlp_http_secure: true,
            ..telemetry("http://otel:4318")
        };
        assert_eq!(
            collector(&secure).map_err(|e| e.key),
            Err("Telemetry.OtlpHttpSecure")
        );
        let ca = TelemetryConf {
            ca_file: "/etc/kq/otel-ca.pem".into(),
            ..telemetry("http://otel:4318")
        };
        assert_eq!(collector(&ca).map_err(|e| e.key), Err("Telemetry.CaFile"));
    }

    #[test]
    fn malformed_endpoints_say_what_is_wrong() {
        for (endpoint, problem) in [
            (
                "http://jaeger:14268/api/traces",
                "the path is `OtlpHttpPath`",
            ),
            ("otel:4318?x=1", "the path is `OtlpHttpPath`"),
            (
                "grpc://otel:4317",
                "must start with `http://`, `https://` or the host",
            ),
            ("::1:4318", "an IPv6 address goes in brackets"),
            ("[::1:4318", "an IPv6 address ends with `]`"),
            ("[::g]:4318", "`::g` is not an IPv6 address"),
            ("[::1]4318", "a port follows `]:`"),
            ("otel:", "`` is not a port"),
            ("otel:0", "`0` is not a port"),
            ("otel:+80", "`+80` is not a port"),
            ("otel:65536", "`65536` is not a port"),
            (":4318", "the host is missing"),
            ("https://", "the host is missing"),
            ("user:key@otel:4318", "credentials go in `OtlpHeaders`"),
            ("ot el:4318", "`ot el` is not a host name or address"),
        ] {
            let e = telemetry(endpoint).collector().unwrap_err();
            assert_eq!(e.key, "Telemetry.Endpoint", "{endpoint}");
            assert!(e.reason.contains(problem), "{endpoint}: {}", e.reason);
        }
    }
}
