//! Helpers for parsing `key = value` attribute arguments.

use syn::meta::ParseNestedMeta;
use syn::{LitStr, Path};

/// One `key = "value"` argument that may appear at most once.
pub struct Arg<T> {
    name: &'static str,
    value: Option<T>,
}

impl<T> Arg<T> {
    pub fn new(name: &'static str) -> Self {
        Arg { name, value: None }
    }

    /// Sets the value, refusing a second one with an error on the repeated key.
    pub fn set(&mut self, meta: &ParseNestedMeta<'_>, value: T) -> syn::Result<()> {
        if self.value.is_some() {
            return Err(meta.error(format_args!("duplicate `{}` argument", self.name)));
        }
        self.value = Some(value);
        Ok(())
    }

    pub fn take(self) -> Option<T> {
        self.value
    }
}

/// Parses `= "string"` after a key.
pub fn string(meta: &ParseNestedMeta<'_>) -> syn::Result<LitStr> {
    meta.value()?.parse()
}

/// Parses `= "path::to::crate"` after a key.
pub fn path(meta: &ParseNestedMeta<'_>) -> syn::Result<Path> {
    string(meta)?.parse()
}

/// The error for a key that is not among `allowed`, listing them.
pub fn unknown(meta: &ParseNestedMeta<'_>, allowed: &[&str]) -> syn::Error {
    let key = meta
        .path
        .get_ident()
        .map_or_else(|| "?".to_owned(), ToString::to_string);
    let allowed: Vec<_> = allowed.iter().map(|k| format!("`{k}`")).collect();
    meta.error(format_args!(
        "unknown argument `{key}`; expected one of {}",
        allowed.join(", ")
    ))
}

/// Merges errors so that all of them are reported, not only the first.
pub fn combine(errors: Vec<syn::Error>) -> Option<syn::Error> {
    errors.into_iter().reduce(|mut all, e| {
        all.combine(e);
        all
    })
}
