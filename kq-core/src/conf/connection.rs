//! The keys every client of a cluster has, consumers and pushers alike: the service's name,
//! `Brokers`, and the TLS and SASL keys. They are declared here once, for `KqConf` and
//! `PusherConf` both, and checked here.

use super::keywords::Mechanism;
use crate::error::InvalidConf;

/// The broker list entry that selects the embedded broker.
pub const EMBEDDED: &str = "embedded";

/// Declares a config block's struct with the connection keys first, flat, as go-queue spells
/// them, and the block's own fields after them; and the block's `connection()` and
/// `debug_connection()`. serde's `flatten` would share the keys through a
/// struct of their own, but a value of the wrong type under a flattened key is reported
/// against its block, where this way it names the key (`KqConsumerConf.Tls`).
macro_rules! with_connection_keys {
    (
        $(#[$attr:meta])*
        pub struct $name:ident {
            $(
                $(#[$field_attr:meta])*
                pub $field:ident: $ty:ty,
            )*
        }
    ) => {
        $(#[$attr])*
        pub struct $name {
            /// The service name (go-zero's `ServiceConf.Name`); becomes librdkafka's
            /// `client.id`.
            #[serde(default)]
            pub name: String,
            /// Bootstrap brokers, `host:port` each. `[embedded]` starts the in-process broker.
            pub brokers: Vec<String>,
            /// A PEM file of the certificate authority that signed the brokers' certificates;
            /// turns TLS on.
            #[serde(default)]
            pub ca_file: String,
            /// A PEM file with this client's certificate, for brokers that ask for one; turns
            /// TLS on.
            #[serde(default)]
            pub cert_file: String,
            /// The PEM file of `CertFile`'s private key.
            #[serde(default)]
            pub key_file: String,
            /// TLS verified against the system's certificate authorities, for brokers whose
            /// certificates a public authority signed.
            #[serde(default)]
            pub tls: bool,
            /// Accept any broker certificate, unverified. Only for test clusters: it gives up
            /// what TLS protects against.
            #[serde(default)]
            pub insecure_skip_verify: bool,
            /// SASL user; turns SASL on when set.
            #[serde(default)]
            pub username: String,
            /// SASL password.
            #[serde(default)]
            pub password: String,
            /// SASL mechanism: `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
            #[serde(default)]
            pub mechanism: $crate::conf::Mechanism,
            $(
                $(#[$field_attr])*
                pub $field: $ty,
            )*
        }

        impl $name {
            /// The connection and security keys, as the client settings are built from them.
            pub(crate) fn connection(&self) -> $crate::conf::Connection<'_> {
                $crate::conf::Connection {
                    name: &self.name,
                    brokers: &self.brokers,
                    ca_file: &self.ca_file,
                    cert_file: &self.cert_file,
                    key_file: &self.key_file,
                    tls: self.tls,
                    insecure_skip_verify: self.insecure_skip_verify,
                    username: &self.username,
                    password: &self.password,
                    mechanism: self.mechanism,
                }
            }

            /// Adds the connection keys to a `Debug` output, the password redacted.
            fn debug_connection(&self, out: &mut ::std::fmt::DebugStruct<'_, '_>) {
                out.field("name", &self.name)
                    .field("brokers", &self.brokers)
                    .field("ca_file", &self.ca_file)
                    .field("cert_file", &self.cert_file)
                    .field("key_file", &self.key_file)
                    .field("tls", &self.tls)
                    .field("insecure_skip_verify", &self.insecure_skip_verify)
                    .field("username", &self.username)
                    .field("password", &$crate::conf::validate::Redacted(&self.password))
                    .field("mechanism", &self.mechanism);
            }
        }
    };
}

/// A block of `with_connection_keys!` built in code: the connection keys at their defaults
/// (no name, no TLS, no SASL) for the given `brokers`, and the block's own fields as given.
macro_rules! with_default_connection {
    ($name:ident { brokers: $brokers:expr, $($field:ident: $value:expr),* $(,)? }) => {
        $name {
            name: String::new(),
            brokers: $brokers,
            ca_file: String::new(),
            cert_file: String::new(),
            key_file: String::new(),
            tls: false,
            insecure_skip_verify: false,
            username: String::new(),
            password: String::new(),
            mechanism: $crate::conf::Mechanism::default(),
            $($field: $value),*
        }
    };
}

pub(super) use {with_connection_keys, with_default_connection};

/// The connection and security keys of a `KqConf` or a `PusherConf`, borrowed.
pub(crate) struct Connection<'a> {
    pub name: &'a str,
    pub brokers: &'a [String],
    pub ca_file: &'a str,
    pub cert_file: &'a str,
    pub key_file: &'a str,
    pub tls: bool,
    pub insecure_skip_verify: bool,
    pub username: &'a str,
    pub password: &'a str,
    pub mechanism: Mechanism,
}

impl Connection<'_> {
    /// Brokers reached without TLS or SASL.
    pub fn plain<'a>(name: &'a str, brokers: &'a [String]) -> Connection<'a> {
        Connection {
            name,
            brokers,
            ca_file: "",
            cert_file: "",
            key_file: "",
            tls: false,
            insecure_skip_verify: false,
            username: "",
            password: "",
            mechanism: Mechanism::Plain,
        }
    }

    /// Whether the brokers are reached over TLS.
    pub fn uses_tls(&self) -> bool {
        self.tls || !self.ca_file.is_empty() || !self.cert_file.is_empty()
    }

    /// Whether the client authenticates with SASL.
    pub fn uses_sasl(&self) -> bool {
        !self.username.is_empty()
    }

    /// Checks the security keys: both halves of a client certificate, readable files, a user
    /// for SCRAM. Names the key at fault.
    pub fn validate(&self) -> Result<(), InvalidConf> {
        match (self.cert_file.is_empty(), self.key_file.is_empty()) {
            (false, true) => return Err(InvalidConf::new("KeyFile", "is needed with `CertFile`")),
            (true, false) => return Err(InvalidConf::new("CertFile", "is needed with `KeyFile`")),
            _ => {}
        }
        for (key, path) in [
            ("CaFile", self.ca_file),
            ("CertFile", self.cert_file),
            ("KeyFile", self.key_file),
        ] {
            if !path.is_empty() {
                std::fs::File::open(path).map_err(|e| {
                    InvalidConf::new(key, format!("cannot be read from `{path}`: {e}"))
                })?;
            }
        }
        if !self.uses_sasl() && (!self.password.is_empty() || self.mechanism != Mechanism::Plain) {
            return Err(InvalidConf::new(
                "Username",
                "must be set when `Password` or `Mechanism` is",
            ));
        }
        Ok(())
    }
}
