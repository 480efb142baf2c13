//! Helpers for parsing `key = value` attribute arguments.
//!
//! A bad argument is reported and parsing goes on with the next one, so that every bad
//! argument of an attribute is reported at once: [`Errors::parse_args`] calls a per-argument
//! function, and a wrong value says which form the key takes, with an example.

use syn::meta::ParseNestedMeta;
use syn::parse::Parser as _;
use syn::{Expr, ExprLit, Lit, LitBool, LitInt, LitStr, Path};

/// One `key = value` argument that may appear at most once.
pub struct Arg<T> {
    name: &'static str,
    /// Whether the key was given, even with a value that could not be used.
    given: bool,
    value: Option<T>,
}

impl<T> Arg<T> {
    pub fn new(name: &'static str) -> Self {
        Arg {
            name,
            given: false,
            value: None,
        }
    }

    /// Reads the key's value with `parse`, refusing a second `key = ...` with an error on
    /// it, whether or not the first had a value that could be used.
    pub fn parse(
        &mut self,
        meta: &ParseNestedMeta<'_>,
        parse: impl FnOnce(&ParseNestedMeta<'_>) -> syn::Result<T>,
    ) -> syn::Result<()> {
        let repeated = std::mem::replace(&mut self.given, true);
        let value = parse(meta);
        if repeated {
            // The value is consumed first, so that the error spans the whole argument.
            return Err(meta.error(format_args!("duplicate `{}` argument", self.name)));
        }
        self.value = Some(value?);
        Ok(())
    }

    /// Whether the key was given.
    pub fn given(&self) -> bool {
        self.given
    }

    pub fn take(self) -> Option<T> {
        self.value
    }
}

/// The errors found so far, reported together.
#[derive(Default)]
pub struct Errors(Vec<syn::Error>);

impl Errors {
    pub fn push(&mut self, error: syn::Error) {
        self.0.push(error);
    }

    /// Keeps the error of `result`, if any, and its value otherwise.
    pub fn keep<T>(&mut self, result: syn::Result<T>) -> Option<T> {
        result.map_err(|e| self.push(e)).ok()
    }

    /// Parses `tokens` as comma-separated arguments, one `argument` call each. An argument
    /// whose call fails is recorded and skipped, and the next one is parsed.
    pub fn parse_args(
        &mut self,
        tokens: proc_macro2::TokenStream,
        mut argument: impl FnMut(&ParseNestedMeta<'_>) -> syn::Result<()>,
    ) {
        let result = syn::meta::parser(|meta| self.argument(&meta, &mut argument)).parse2(tokens);
        self.keep(result);
    }

    /// Like [`Errors::parse_args`], for the arguments of an attribute such as `#[kq(...)]`.
    pub fn parse_attribute(
        &mut self,
        attribute: &syn::Attribute,
        mut argument: impl FnMut(&ParseNestedMeta<'_>) -> syn::Result<()>,
    ) {
        let result = attribute.parse_nested_meta(|meta| self.argument(&meta, &mut argument));
        self.keep(result);
    }

    fn argument(
        &mut self,
        meta: &ParseNestedMeta<'_>,
        argument: &mut impl FnMut(&ParseNestedMeta<'_>) -> syn::Result<()>,
    ) -> syn::Result<()> {
        if let Err(error) = argument(meta) {
            self.push(error);
            skip_rest(meta)?;
        }
        Ok(())
    }

    /// All the errors as one, or `None` when there are none.
    pub fn combined(self) -> Option<syn::Error> {
        self.0.into_iter().reduce(|mut all, e| {
            all.combine(e);
            all
        })
    }
}

/// Consumes what is left of an argument whose value could not be used, up to the comma
/// before the next one.
fn skip_rest(meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
    while !meta.input.is_empty() && !meta.input.peek(syn::Token![,]) {
        meta.input.parse::<proc_macro2::TokenTree>()?;
    }
    Ok(())
}

/// The key of `meta` as written, for error messages.
fn key(meta: &ParseNestedMeta<'_>) -> String {
    meta.path.get_ident().map_or_else(
        || quote::ToTokens::to_token_stream(&meta.path).to_string(),
        ToString::to_string,
    )
}

/// Parses `= value` after a key as an expression, whatever its type, so that a value of the
/// wrong type is reported with the form the key takes rather than as a parse error.
fn value(meta: &ParseNestedMeta<'_>, example: &str) -> syn::Result<Expr> {
    if !meta.input.peek(syn::Token![=]) {
        return Err(meta.error(format_args!(
            "`{}` takes a value, as in `{example}`",
            key(meta)
        )));
    }
    meta.value()?.parse()
}

/// The error for a value of the wrong type: what the key takes, and an example.
fn expected(meta: &ParseNestedMeta<'_>, value: &Expr, what: &str, example: &str) -> syn::Error {
    syn::Error::new_spanned(
        value,
        format_args!("`{}` takes {what}, as in `{example}`", key(meta)),
    )
}

/// Parses `= "string"` after a key; `example` shows the key with a value of that form.
pub fn string(meta: &ParseNestedMeta<'_>, example: &str) -> syn::Result<LitStr> {
    match value(meta, example)? {
        Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        }) => Ok(lit),
        other => Err(expected(meta, &other, "a string", example)),
    }
}

/// Parses `= 5` after a key: a positive integer.
pub fn int(meta: &ParseNestedMeta<'_>, example: &str) -> syn::Result<LitInt> {
    match value(meta, example)? {
        Expr::Lit(ExprLit {
            lit: Lit::Int(lit), ..
        }) => Ok(lit),
        other => Err(expected(meta, &other, "a positive integer", example)),
    }
}

/// Parses `= true` or `= false` after a key.
pub fn boolean(meta: &ParseNestedMeta<'_>, example: &str) -> syn::Result<LitBool> {
    match value(meta, example)? {
        Expr::Lit(ExprLit {
            lit: Lit::Bool(lit),
            ..
        }) => Ok(lit),
        other => Err(expected(meta, &other, "`true` or `false`", example)),
    }
}

/// Parses `= "path::to::crate"` after a key.
pub fn path(meta: &ParseNestedMeta<'_>, example: &str) -> syn::Result<Path> {
    let lit = string(meta, example)?;
    lit.parse().map_err(|_| {
        syn::Error::new_spanned(
            &lit,
            format_args!(
                "`{}` takes a path in a string, as in `{example}`",
                key(meta)
            ),
        )
    })
}

/// The error for a key that is not among `allowed`, listing them.
pub fn unknown(meta: &ParseNestedMeta<'_>, allowed: &[&str]) -> syn::Error {
    let allowed: Vec<_> = allowed.iter().map(|k| format!("`{k}`")).collect();
    meta.error(format_args!(
        "unknown argument `{}`; expected one of {}",
        key(meta),
        allowed.join(", ")
    ))
}

/// A Go duration (`50ms`, `1s`, `1m30s`), as config files write them, in nanoseconds.
pub fn go_duration(text: &str) -> Result<u64, String> {
    let invalid = || format!("`{text}` is not a duration: write it as in `\"50ms\"` or `\"1s\"`");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut nanos = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(invalid)?;
        let number: f64 = rest[..number_len].parse().map_err(|_| invalid())?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(invalid()),
        };
        nanos += number * unit;
        rest = &rest[unit_len..];
    }
    if nanos > 60e9 {
        return Err(format!(
            "`{text}` is longer than `batch_wait` takes: at most 1m"
        ));
    }
    Ok(nanos.round() as u64)
}
