//! `#[derive(KqConfig)]`: a table of the struct's fields by serde name and Rust name, so that
//! the runtime finds the `KqConf` a consumer's `conf = "..."` names.

use proc_macro2::TokenStream;
use quote::quote;
use syn::ext::IdentExt as _;
use syn::{Data, DeriveInput, Fields, LitStr, Path};

use crate::attr::{self, Arg, Errors};

pub fn expand(input: TokenStream) -> TokenStream {
    let input = match syn::parse2::<DeriveInput>(input) {
        Ok(input) => input,
        Err(error) => return error.to_compile_error(),
    };
    let mut errors = Errors::default();
    // serde's derive reports what is wrong in its own attributes; saying it again would only
    // double each error. The table could be wrong all the same, so the fallback stands in.
    let mut serde_errors = Errors::default();
    let krate = kq_crate(&input.attrs, &mut errors);
    let fields = fields(&input, &mut errors, &mut serde_errors);
    let serde_failed = serde_errors.combined().is_some();
    match errors.combined() {
        None if !serde_failed => generate(&input, &krate, &fields, Impl::Table),
        // An impl all the same, so that the derive's errors are the only ones: `kq::main!`
        // and other uses of the struct as a `KqConfig` do not fail too.
        error => {
            let error = error.map(|e| e.to_compile_error());
            let fallback = generate(&input, &krate, &[], Impl::Fallback);
            quote! { #error #fallback }
        }
    }
}

/// What the generated impl is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Impl {
    /// The struct's table of fields.
    Table,
    /// An empty table beside the derive's errors, which stand for the struct's uses.
    Fallback,
}

/// One entry of the table: a field with a key of its own.
struct Field<'a> {
    ident: &'a syn::Ident,
    serde_name: String,
    rust_name: String,
}

/// The struct's fields that have a key; every problem goes to `errors`, and problems in
/// serde's attributes to `serde_errors`.
fn fields<'a>(
    input: &'a DeriveInput,
    errors: &mut Errors,
    serde_errors: &mut Errors,
) -> Vec<Field<'a>> {
    let rename_all = rename_all(&input.attrs, serde_errors);
    let fields = match &input.data {
        Data::Struct(data) => match &data.fields {
            Fields::Named(fields) => fields,
            Fields::Unnamed(fields) => {
                errors.push(syn::Error::new_spanned(
                    fields,
                    "KqConfig needs named fields: a config key is a field name",
                ));
                return Vec::new();
            }
            Fields::Unit => {
                errors.push(syn::Error::new_spanned(
                    &input.ident,
                    "KqConfig needs a struct with named fields, one per config key",
                ));
                return Vec::new();
            }
        },
        Data::Enum(data) => {
            errors.push(syn::Error::new_spanned(
                data.enum_token,
                "KqConfig derives only on a struct with named fields, not on an enum",
            ));
            return Vec::new();
        }
        Data::Union(data) => {
            errors.push(syn::Error::new_spanned(
                data.union_token,
                "KqConfig derives only on a struct with named fields, not on a union",
            ));
            return Vec::new();
        }
    };

    let mut entries = Vec::new();
    for field in &fields.named {
        let Some(ident) = &field.ident else { continue };
        let serde = field_serde(&field.attrs, serde_errors);
        if let Some(flatten) = &serde.flatten {
            // Refused rather than supported: the runtime finds a consumer's `KqConf` (and the
            // checks and `--describe` a `PusherConf`) by the key that `conf = "..."` names,
            // among the keys listed here, and reports a bad value as `Key.Field`. A flattened
            // block has no key; its keys would sit at the top level, where `Name` and `Log`
            // are the service's own, and two flattened blocks would read the same keys. An
            // `Option` of a block keeps its key, so the runtime can tell an absent block from
            // a present one: that one is supported. A flattened field of another type is the
            // application's, and is not searched.
            if let Some(block) = conf_block(&field.ty) {
                let advice = match block {
                    Block::Plain(name) => format!(
                        "a `{name}` cannot be `#[serde(flatten)]`: the runtime finds it by the key of its block, and a flattened one has none; give it a key of its own (an `Option<{name}>` for a block that may be absent)"
                    ),
                    Block::Optional(name) => format!(
                        "an `Option<{name}>` cannot be `#[serde(flatten)]`: the runtime finds it by the key of its block, and a flattened one has none; give it a key of its own"
                    ),
                };
                errors.push(syn::Error::new_spanned(flatten, advice));
            }
            continue;
        }
        let rust_name = ident.unraw().to_string();
        let serde_name = serde.rename.unwrap_or_else(|| {
            rename_all.map_or_else(|| rust_name.clone(), |rule| rule.apply(&rust_name))
        });
        entries.push(Field {
            ident,
            serde_name,
            rust_name,
        });
    }
    entries
}

/// A field type that holds one of kq's config blocks.
enum Block {
    /// `KqConf` or `PusherConf`.
    Plain(&'static str),
    /// `Option<KqConf>` or `Option<PusherConf>`.
    Optional(&'static str),
}

/// Whether `ty` names `KqConf` or `PusherConf`, or an `Option` of one, by the last segment of
/// its path. An alias escapes this; the consumer naming its block is then refused at start.
fn conf_block(ty: &syn::Type) -> Option<Block> {
    let syn::Type::Path(path) = ty else {
        return None;
    };
    let last = path.path.segments.last()?;
    match &last.arguments {
        syn::PathArguments::None => ["KqConf", "PusherConf"]
            .into_iter()
            .find(|name| last.ident == name)
            .map(Block::Plain),
        syn::PathArguments::AngleBracketed(args) if last.ident == "Option" => {
            match (args.args.len(), args.args.first()?) {
                (1, syn::GenericArgument::Type(inner)) => match conf_block(inner)? {
                    Block::Plain(name) => Some(Block::Optional(name)),
                    Block::Optional(_) => None,
                },
                _ => None,
            }
        }
        _ => None,
    }
}

fn generate(input: &DeriveInput, krate: &Path, fields: &[Field<'_>], kind: Impl) -> TokenStream {
    let entries = fields.iter().map(|field| {
        let Field {
            ident,
            serde_name,
            rust_name,
        } = field;
        quote! {
            #krate::__private::ConfigField {
                serde_name: #serde_name,
                rust_name: #rust_name,
                value: &self.#ident,
            }
        }
    });

    let name = &input.ident;
    let mut generics = input.generics.clone();
    let where_clause = generics.make_where_clause();
    for param in input.generics.type_params() {
        let ident = &param.ident;
        where_clause
            .predicates
            .push(syn::parse_quote!(#ident: 'static));
    }
    if kind == Impl::Fallback {
        // Higher-ranked, so that the compiler takes it as a condition of the impl and does not
        // report it when it fails: when serde's derive failed, its error is the one to read.
        where_clause.predicates.push(syn::parse_quote!(
            for<'de> Self: #krate::__private::DeserializeOwned + ::core::marker::Send + ::core::marker::Sync + 'static
        ));
    } else if !input.generics.params.is_empty() {
        // The impl applies to the instances that deserialize. A struct without generics gets
        // no such bound: the trait's own then reports a missing `Deserialize` on the struct,
        // with serde's advice to derive it.
        where_clause.predicates.push(syn::parse_quote!(
            Self: #krate::__private::DeserializeOwned + ::core::marker::Send + ::core::marker::Sync + 'static
        ));
    }
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    quote! {
        impl #impl_generics #krate::__private::KqConfig for #name #ty_generics #where_clause {
            fn kq_fields(&self) -> ::std::vec::Vec<#krate::__private::ConfigField<'_>> {
                ::std::vec![#(#entries),*]
            }
        }
    }
}

/// `#[kq(crate = "...")]` on the struct, for a renamed dependency; `::kq` by default.
fn kq_crate(attrs: &[syn::Attribute], errors: &mut Errors) -> Path {
    let mut krate = Arg::<Path>::new("crate");
    for attribute in attrs.iter().filter(|a| a.path().is_ident("kq")) {
        errors.parse_attribute(attribute, |meta| {
            if meta.path.is_ident("crate") {
                krate.parse(meta, |meta| attr::path(meta, r#"crate = "::kq""#))
            } else {
                Err(attr::unknown(meta, &["crate"]))
            }
        });
    }
    krate.take().unwrap_or_else(|| syn::parse_quote!(::kq))
}

#[derive(Default)]
struct FieldSerde {
    rename: Option<String>,
    /// The `flatten` of `#[serde(flatten)]`, for errors about it.
    flatten: Option<Path>,
}

/// The field's `#[serde(rename = "...")]` (or `rename(deserialize = "...")`) and `flatten`.
/// Other serde arguments are serde's business and are skipped.
fn field_serde(attrs: &[syn::Attribute], errors: &mut Errors) -> FieldSerde {
    let mut found = FieldSerde::default();
    for attribute in attrs.iter().filter(|a| a.path().is_ident("serde")) {
        errors.parse_attribute(attribute, |meta| {
            if meta.path.is_ident("rename") {
                if let Some(name) = deserialize_name(meta, r#"rename = "Name""#)? {
                    found.rename = Some(name.value());
                }
            } else if meta.path.is_ident("flatten") {
                found.flatten = Some(meta.path.clone());
            } else {
                skip(meta)?;
            }
            Ok(())
        });
    }
    found
}

/// The struct's `#[serde(rename_all = "...")]` (or `rename_all(deserialize = "...")`).
fn rename_all(attrs: &[syn::Attribute], errors: &mut Errors) -> Option<RenameRule> {
    let mut rule = None;
    for attribute in attrs.iter().filter(|a| a.path().is_ident("serde")) {
        errors.parse_attribute(attribute, |meta| {
            if meta.path.is_ident("rename_all") {
                if let Some(name) = deserialize_name(meta, r#"rename_all = "PascalCase""#)? {
                    rule = Some(RenameRule::parse(&name)?);
                }
            } else {
                skip(meta)?;
            }
            Ok(())
        });
    }
    rule
}

/// Reads `= "x"` or `(deserialize = "x", serialize = "y")`, keeping the deserialize side.
/// `example` shows the first form.
fn deserialize_name(
    meta: &syn::meta::ParseNestedMeta<'_>,
    example: &str,
) -> syn::Result<Option<LitStr>> {
    if meta.input.peek(syn::Token![=]) {
        return attr::string(meta, example).map(Some);
    }
    let mut name = None;
    meta.parse_nested_meta(|inner| {
        let value = attr::string(&inner, r#"deserialize = "Name""#)?;
        if inner.path.is_ident("deserialize") {
            name = Some(value);
        }
        Ok(())
    })?;
    Ok(name)
}

/// Consumes an argument we do not interpret, whatever its form.
fn skip(meta: &syn::meta::ParseNestedMeta<'_>) -> syn::Result<()> {
    if meta.input.peek(syn::Token![=]) {
        meta.value()?.parse::<syn::Expr>()?;
    } else if meta.input.peek(syn::token::Paren) {
        let content;
        syn::parenthesized!(content in meta.input);
        content.parse::<TokenStream>()?;
    }
    Ok(())
}

/// serde's `rename_all` rules, applied to a snake_case field name.
#[derive(Clone, Copy)]
enum RenameRule {
    Lower,
    Upper,
    Pascal,
    Camel,
    Snake,
    ScreamingSnake,
    Kebab,
    ScreamingKebab,
}

impl RenameRule {
    fn parse(name: &LitStr) -> syn::Result<Self> {
        Ok(match name.value().as_str() {
            "lowercase" => RenameRule::Lower,
            "UPPERCASE" => RenameRule::Upper,
            "PascalCase" => RenameRule::Pascal,
            "camelCase" => RenameRule::Camel,
            "snake_case" => RenameRule::Snake,
            "SCREAMING_SNAKE_CASE" => RenameRule::ScreamingSnake,
            "kebab-case" => RenameRule::Kebab,
            "SCREAMING-KEBAB-CASE" => RenameRule::ScreamingKebab,
            other => {
                return Err(syn::Error::new(
                    name.span(),
                    format!("unknown rename rule `{other}`"),
                ))
            }
        })
    }

    fn apply(self, field: &str) -> String {
        match self {
            RenameRule::Lower | RenameRule::Snake => field.to_owned(),
            RenameRule::Upper | RenameRule::ScreamingSnake => field.to_ascii_uppercase(),
            RenameRule::Pascal => pascal(field),
            RenameRule::Camel => {
                let pascal = pascal(field);
                let mut chars = pascal.chars();
                match chars.next() {
                    Some(first) => first.to_ascii_lowercase().to_string() + chars.as_str(),
                    None => pascal,
                }
            }
            RenameRule::Kebab => field.replace('_', "-"),
            RenameRule::ScreamingKebab => field.replace('_', "-").to_ascii_uppercase(),
        }
    }
}

fn pascal(field: &str) -> String {
    field
        .split('_')
        .map(|part| {
            let mut chars = part.chars();
            match chars.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
                None => String::new(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rename_rules_match_serde() {
        let cases = [
            ("PascalCase", "kq_consumer_conf", "KqConsumerConf"),
            ("camelCase", "kq_consumer_conf", "kqConsumerConf"),
            ("SCREAMING_SNAKE_CASE", "kq_conf", "KQ_CONF"),
            ("kebab-case", "kq_conf", "kq-conf"),
            ("SCREAMING-KEBAB-CASE", "kq_conf", "KQ-CONF"),
            ("lowercase", "kq_conf", "kq_conf"),
            ("UPPERCASE", "kq_conf", "KQ_CONF"),
        ];
        for (rule, field, expected) in cases {
            let rule =
                RenameRule::parse(&LitStr::new(rule, proc_macro2::Span::call_site())).unwrap();
            assert_eq!(rule.apply(field), expected);
        }
    }
}
