//! Loading the application's config file: YAML (go-zero's format), JSON or TOML by extension.

use std::fmt;
use std::path::{Path, PathBuf};

use config::{Config, File, FileFormat};
use serde::de::DeserializeOwned;

/// A config file that could not be read, parsed or deserialized. Its text names the file and,
/// where the fault lies in one value, the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    path: PathBuf,
    detail: String,
}

impl LoadError {
    /// An error about the file at `path`.
    pub fn new(path: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        LoadError {
            path: path.into(),
            detail: detail.into(),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What is wrong, without the file name.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.detail)
    }
}

impl std::error::Error for LoadError {}

/// Reads and deserializes a config file; the extension picks the format (`.yaml`/`.yml`,
/// `.json`, `.toml`).
///
/// ```no_run
/// #[derive(serde::Deserialize)]
/// #[serde(rename_all = "PascalCase")]
/// struct Config {
///     kq_consumer_conf: kq::KqConf,
/// }
///
/// let config: Config = kq::load_config("etc/mq.yaml")?;
/// # Ok::<(), kq::LoadError>(())
/// ```
pub fn load_config<C: DeserializeOwned>(path: impl AsRef<Path>) -> Result<C, LoadError> {
    ConfigFile::read(path)?.deserialize()
}

/// A config file read and parsed once, for deserializing into more than one type (the app's
/// config, and the service keys kq reads from the same file).
pub(crate) struct ConfigFile {
    path: PathBuf,
    parsed: Config,
}

impl ConfigFile {
    /// Reads and parses the file; the extension picks the format.
    pub fn read(path: impl AsRef<Path>) -> Result<Self, LoadError> {
        let path = path.as_ref();
        let error = |detail: String| LoadError::new(path, detail);
        let format = match path.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => FileFormat::Yaml,
            Some("json") => FileFormat::Json,
            Some("toml") => FileFormat::Toml,
            other => {
                return Err(error(format!(
                    "unsupported config format {}: use .yaml, .yml, .json or .toml",
                    other.map_or_else(|| "(no extension)".to_owned(), |e| format!("`.{e}`"))
                )))
            }
        };
        let text = std::fs::read_to_string(path).map_err(|e| error(format!("cannot read: {e}")))?;
        let parsed = Config::builder()
            .add_source(File::from_str(&text, format))
            .build()
            .map_err(|e| error(format!("cannot parse: {e}")))?;
        Ok(ConfigFile {
            path: path.to_owned(),
            parsed,
        })
    }

    /// Deserializes the whole file into `C`.
    pub fn deserialize<C: DeserializeOwned>(&self) -> Result<C, LoadError> {
        self.parsed
            .clone()
            .try_deserialize()
            .map_err(|e| LoadError::new(&self.path, e.to_string()))
    }
}
