//! `#[derive(KqConfig)]`: a table of the struct's fields by serde name and Rust name, so that
//! the runtime finds the `KqConf` a consumer's `conf = "..."` names.

use proc_macro2::TokenStream;
use quote::quote;
use syn::ext::IdentExt as _;
use syn::{Data, DeriveInput, Fields, LitStr, Path};

use crate::attr::{self, Arg};

pub fn expand(input: TokenStream) -> TokenStream {
    match syn::parse2::<DeriveInput>(input).and_then(|input| generate(&input)) {
        Ok(tokens) => tokens,
        Err(error) => error.to_compile_error(),
    }
}

fn generate(input: &DeriveInput) -> syn::Result<TokenStream> {
    let fields = match &input.data {
        Data::Struct(data) => match &data.fields {
            Fields::Named(fields) => fields,
            Fields::Unnamed(fields) => {
                return Err(syn::Error::new_spanned(
                    fields,
                    "KqConfig needs named fields: a config key is a field name",
                ))
            }
            Fields::Unit => {
                return Err(syn::Error::new_spanned(
                    &input.ident,
                    "KqConfig needs a struct with named fields, one per config key",
                ))
            }
        },
        Data::Enum(data) => {
            return Err(syn::Error::new_spanned(
                data.enum_token,
                "KqConfig derives only on a struct with named fields, not on an enum",
            ))
        }
        Data::Union(data) => {
            return Err(syn::Error::new_spanned(
                data.union_token,
                "KqConfig derives only on a struct with named fields, not on a union",
            ))
        }
    };

    let krate = kq_crate(&input.attrs)?;
    let rename_all = rename_all(&input.attrs)?;
    let mut entries = Vec::new();
    let mut errors = Vec::new();
    for field in &fields.named {
        let Some(ident) = &field.ident else { continue };
        let serde = match field_serde(&field.attrs) {
            Ok(serde) => serde,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        if serde.flatten {
            // A flattened field has no key of its own.
            continue;
        }
        let rust_name = ident.unraw().to_string();
        let serde_name = serde.rename.unwrap_or_else(|| {
            rename_all.map_or_else(|| rust_name.clone(), |rule| rule.apply(&rust_name))
        });
        entries.push(quote! {
            #krate::__private::ConfigField {
                serde_name: #serde_name,
                rust_name: #rust_name,
                value: &self.#ident,
            }
        });
    }
    if let Some(error) = errors.into_iter().reduce(|mut all, e| {
        all.combine(e);
        all
    }) {
        return Err(error);
    }

    let name = &input.ident;
    let mut generics = input.generics.clone();
    {
        let where_clause = generics.make_where_clause();
        for param in input.generics.type_params() {
            let ident = &param.ident;
            where_clause
                .predicates
                .push(syn::parse_quote!(#ident: 'static));
        }
        where_clause.predicates.push(syn::parse_quote!(
            Self: #krate::__private::DeserializeOwned + ::core::marker::Send + ::core::marker::Sync + 'static
        ));
    }
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    Ok(quote! {
        impl #impl_generics #krate::__private::KqConfig for #name #ty_generics #where_clause {
            fn kq_fields(&self) -> ::std::vec::Vec<#krate::__private::ConfigField<'_>> {
                ::std::vec![#(#entries),*]
            }
        }
    })
}

/// `#[kq(crate = "...")]` on the struct, for a renamed dependency.
fn kq_crate(attrs: &[syn::Attribute]) -> syn::Result<Path> {
    let mut krate = Arg::<Path>::new("crate");
    for attribute in attrs.iter().filter(|a| a.path().is_ident("kq")) {
        attribute.parse_nested_meta(|meta| {
            if meta.path.is_ident("crate") {
                krate.parse(&meta, |meta| attr::path(meta, r#"crate = "::kq""#))
            } else {
                Err(attr::unknown(&meta, &["crate"]))
            }
        })?;
    }
    Ok(krate.take().unwrap_or_else(|| syn::parse_quote!(::kq)))
}

#[derive(Default)]
struct FieldSerde {
    rename: Option<String>,
    flatten: bool,
}

/// The field's `#[serde(rename = "...")]` (or `rename(deserialize = "...")`) and `flatten`.
/// Other serde arguments are serde's business and are skipped.
fn field_serde(attrs: &[syn::Attribute]) -> syn::Result<FieldSerde> {
    let mut found = FieldSerde::default();
    for attribute in attrs.iter().filter(|a| a.path().is_ident("serde")) {
        attribute.parse_nested_meta(|meta| {
            if meta.path.is_ident("rename") {
                if let Some(name) = deserialize_name(&meta, r#"rename = "Name""#)? {
                    found.rename = Some(name.value());
                }
            } else if meta.path.is_ident("flatten") {
                found.flatten = true;
            } else {
                skip(&meta)?;
            }
            Ok(())
        })?;
    }
    Ok(found)
}

/// The struct's `#[serde(rename_all = "...")]` (or `rename_all(deserialize = "...")`).
fn rename_all(attrs: &[syn::Attribute]) -> syn::Result<Option<RenameRule>> {
    let mut rule = None;
    for attribute in attrs.iter().filter(|a| a.path().is_ident("serde")) {
        attribute.parse_nested_meta(|meta| {
            if meta.path.is_ident("rename_all") {
                if let Some(name) = deserialize_name(&meta, r#"rename_all = "PascalCase""#)? {
                    rule = Some(RenameRule::parse(&name)?);
                }
            } else {
                skip(&meta)?;
            }
            Ok(())
        })?;
    }
    Ok(rule)
}

/// Reads `= "x"` or `(deserialize = "x", serialize = "y")`, keeping the deserialize side;
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
