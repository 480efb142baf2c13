//! `#[kq::consumer(conf = "...")]`: keeps the function as it is and registers a handler
//! beside it.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::ext::IdentExt as _;
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, LitBool, LitInt, LitStr, Path, ReturnType, Type};

use crate::attr::{self, Arg, Errors};

const KEYS: &[&str] = &[
    "conf",
    "name",
    "crate",
    "retry_attempts",
    "dead_letter_topic",
    "force_commit",
    "batch_size",
    "batch_wait",
];

/// The parsed attribute arguments.
struct Args {
    conf: LitStr,
    name: Option<LitStr>,
    krate: Path,
    retry_attempts: Option<LitInt>,
    dead_letter_topic: Option<LitStr>,
    force_commit: Option<LitBool>,
    batch_size: Option<LitInt>,
    /// `batch_wait = "10ms"`, with the duration it reads as, in nanoseconds.
    batch_wait: Option<(LitStr, u64)>,
}

/// How one parameter is taken from the message, or from the batch.
enum Param {
    /// go-queue's `key: &str`, the first `&str`.
    Key,
    /// go-queue's `value: &str`, the second `&str`.
    Value,
    /// The batch of a batch consumer (`&[kq::Message]`, `Vec<kq::Json<T>>`), through
    /// `FromBatch`.
    Batch(Box<Type>),
    /// Anything else: through `FromMessage`, or in a batch consumer through `FromContext`.
    Extract(Box<Type>),
}

impl Param {
    /// The type of an `Extract` parameter.
    fn extracted(&self) -> Option<&Type> {
        match self {
            Param::Extract(ty) => Some(ty),
            _ => None,
        }
    }

    /// The type of the batch parameter.
    fn batch(&self) -> Option<&Type> {
        match self {
            Param::Batch(ty) => Some(ty),
            _ => None,
        }
    }
}

pub fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let function: ItemFn = match syn::parse2(item.clone()) {
        Ok(function) => function,
        // Not a function at all: say so on the item, and keep it for later diagnostics.
        Err(_) => {
            let error = syn::Error::new_spanned(&item, "#[kq::consumer] goes on an `async fn`");
            return with_error(item, error);
        }
    };
    let mut errors = Errors::default();
    let args = parse_args(args, &mut errors);
    let params = check_function(&function, &mut errors);
    if let Some(args) = &args {
        check_batch_args(args, &params, &mut errors);
    }
    match (errors.combined(), args) {
        (None, Some(args)) => generate(&function, &args, &params),
        (Some(error), _) => with_error(item, error),
        // `parse_args` returns no arguments only with an error.
        (None, None) => item,
    }
}

fn with_error(item: TokenStream, error: syn::Error) -> TokenStream {
    let error = error.to_compile_error();
    quote! { #item #error }
}

/// The attribute's arguments, or `None` when `conf` is missing; every problem goes to `errors`.
fn parse_args(tokens: TokenStream, errors: &mut Errors) -> Option<Args> {
    let mut conf = Arg::<LitStr>::new("conf");
    let mut name = Arg::<LitStr>::new("name");
    let mut krate = Arg::<Path>::new("crate");
    let mut retry_attempts = Arg::<LitInt>::new("retry_attempts");
    let mut dead_letter_topic = Arg::<LitStr>::new("dead_letter_topic");
    let mut force_commit = Arg::<LitBool>::new("force_commit");
    let mut batch_size = Arg::<LitInt>::new("batch_size");
    let mut batch_wait = Arg::<(LitStr, u64)>::new("batch_wait");
    errors.parse_args(tokens, |meta| {
        if meta.path.is_ident("conf") {
            conf.parse(meta, |meta| {
                let value = attr::string(meta, r#"conf = "KqConsumerConf""#)?;
                not_blank(value, "`conf` must name a config key")
            })
        } else if meta.path.is_ident("name") {
            name.parse(meta, |meta| {
                let value = attr::string(meta, r#"name = "payment_success""#)?;
                not_blank(value, "`name` must not be empty")
            })
        } else if meta.path.is_ident("crate") {
            krate.parse(meta, |meta| attr::path(meta, r#"crate = "::kq""#))
        } else if meta.path.is_ident("retry_attempts") {
            retry_attempts.parse(meta, |meta| {
                let value = attr::int(meta, "retry_attempts = 5")?;
                if value.base10_parse::<u32>()? < 1 {
                    return Err(syn::Error::new(
                        value.span(),
                        "`retry_attempts` counts the first attempt too: at least 1",
                    ));
                }
                Ok(value)
            })
        } else if meta.path.is_ident("dead_letter_topic") {
            dead_letter_topic.parse(meta, |meta| {
                let value = attr::string(meta, r#"dead_letter_topic = "payments-dlq""#)?;
                not_blank(value, "`dead_letter_topic` must name a topic")
            })
        } else if meta.path.is_ident("force_commit") {
            force_commit.parse(meta, |meta| attr::boolean(meta, "force_commit = false"))
        } else if meta.path.is_ident("batch_size") {
            batch_size.parse(meta, |meta| {
                let value = attr::int(meta, "batch_size = 500")?;
                let size = value.base10_parse::<usize>()?;
                if !(1..=BATCH_SIZE_LIMIT).contains(&size) {
                    return Err(syn::Error::new(
                        value.span(),
                        format_args!("`batch_size` is from 1 to {BATCH_SIZE_LIMIT}"),
                    ));
                }
                Ok(value)
            })
        } else if meta.path.is_ident("batch_wait") {
            batch_wait.parse(meta, |meta| {
                let value = attr::string(meta, r#"batch_wait = "50ms""#)?;
                let nanos = attr::go_duration(&value.value())
                    .map_err(|e| syn::Error::new(value.span(), e))?;
                Ok((value, nanos))
            })
        } else {
            Err(attr::unknown(meta, KEYS))
        }
    });
    // A `conf` with a bad value is reported as such, not as missing too.
    let conf_given = conf.given();
    let Some(conf) = conf.take() else {
        if conf_given {
            return None;
        }
        errors.push(syn::Error::new(
            Span::call_site(),
            "missing `conf`: name the config key of the consumer's KqConf, as in #[kq::consumer(conf = \"KqConsumerConf\")]",
        ));
        return None;
    };
    Some(Args {
        conf,
        name: name.take(),
        krate: krate.take().unwrap_or_else(|| syn::parse_quote!(::kq)),
        retry_attempts: retry_attempts.take(),
        dead_letter_topic: dead_letter_topic.take(),
        force_commit: force_commit.take(),
        batch_size: batch_size.take(),
        batch_wait: batch_wait.take(),
    })
}

/// The largest `batch_size`, as `Batch.Size` takes it.
const BATCH_SIZE_LIMIT: usize = 10_000;

/// `batch_size` and `batch_wait` are for batch consumers.
fn check_batch_args(args: &Args, params: &[Param], errors: &mut Errors) {
    if params.iter().any(|param| matches!(param, Param::Batch(_))) {
        return;
    }
    let hint = "is for a batch consumer: one that takes `&[kq::Message]` or `Vec<kq::Json<T>>`";
    if let Some(size) = &args.batch_size {
        errors.push(syn::Error::new(
            size.span(),
            format_args!("`batch_size` {hint}"),
        ));
    }
    if let Some((wait, _)) = &args.batch_wait {
        errors.push(syn::Error::new(
            wait.span(),
            format_args!("`batch_wait` {hint}"),
        ));
    }
}

fn not_blank(value: LitStr, error: &str) -> syn::Result<LitStr> {
    if value.value().trim().is_empty() {
        return Err(syn::Error::new(value.span(), error));
    }
    Ok(value)
}

/// Checks the function's shape and classifies its parameters; every problem goes to `errors`.
fn check_function(function: &ItemFn, errors: &mut Errors) -> Vec<Param> {
    let sig = &function.sig;
    if sig.asyncness.is_none() {
        errors.push(syn::Error::new_spanned(
            sig.fn_token,
            "a kq consumer must be an `async fn`",
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        errors.push(syn::Error::new_spanned(
            &sig.generics,
            "a kq consumer cannot be generic: the runtime calls it with concrete types",
        ));
    }
    if let Some(unsafety) = sig.unsafety {
        errors.push(syn::Error::new_spanned(
            unsafety,
            "a kq consumer cannot be `unsafe`",
        ));
    }
    if let Some(variadic) = &sig.variadic {
        errors.push(syn::Error::new_spanned(
            variadic,
            "a kq consumer cannot be variadic",
        ));
    }

    let mut params = Vec::new();
    let mut strings = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(receiver) => errors.push(syn::Error::new_spanned(
                receiver,
                "a kq consumer is a free function; it cannot take `self`",
            )),
            FnArg::Typed(typed) => {
                let ty = &typed.ty;
                if let Type::ImplTrait(_) = &**ty {
                    errors.push(syn::Error::new_spanned(
                        ty,
                        "a kq consumer cannot take `impl Trait`: name a concrete type",
                    ));
                } else if let Some(reference) = mutable_reference(ty) {
                    // No `FromMessage` impl can hand out `&mut`: the message and the state
                    // are shared with the queue, which commits the message afterwards.
                    errors.push(syn::Error::new_spanned(
                        reference,
                        "a kq consumer cannot take `&mut`: the message and the state are shared with the queue; take `&kq::Message` or `&kq::State<S>`",
                    ));
                } else if is_owned_string(ty) {
                    // Only kq could implement `FromMessage` for `String` (the orphan rule),
                    // and it does not: the author most likely meant go-queue's key or value.
                    errors.push(syn::Error::new_spanned(
                        ty,
                        "a kq consumer takes the key and the value as `&str`, not `String`: take `key: &str, value: &str` as go-queue's Consume does, and `.to_owned()` what must outlive the handler",
                    ));
                } else if is_batch(ty) {
                    params.push(Param::Batch(ty.clone()));
                } else if is_str_ref(ty) {
                    strings.push(ty.clone());
                    params.push(if strings.len() == 1 {
                        Param::Key
                    } else {
                        Param::Value
                    });
                } else {
                    params.push(Param::Extract(ty.clone()));
                }
            }
        }
    }
    let batches: Vec<_> = params
        .iter()
        .filter_map(|param| match param {
            Param::Batch(ty) => Some(ty),
            _ => None,
        })
        .collect();
    if !batches.is_empty() {
        // A batch consumer runs once per batch: a parameter of one message has no message.
        for second in &batches[1..] {
            errors.push(syn::Error::new_spanned(
                second,
                "a kq consumer takes one batch: `&[kq::Message]` or `Vec<kq::Json<T>>`, not two",
            ));
        }
        for string in &strings {
            errors.push(syn::Error::new_spanned(
                string,
                "a batch consumer cannot take a key or a value: it runs once per batch; read them from the batch's messages",
            ));
        }
        for param in &params {
            if let Param::Extract(ty) = param {
                if is_single_message_type(ty) {
                    errors.push(syn::Error::new_spanned(
                        ty,
                        "a batch consumer cannot take one message: it runs once per batch, which it takes as `&[kq::Message]` or `Vec<kq::Json<T>>`",
                    ));
                }
            }
        }
        return params;
    }
    match strings.len() {
        0 | 2 => {}
        1 => errors.push(syn::Error::new_spanned(
            &strings[0],
            "a lone `&str` is ambiguous: take `key: &str, value: &str` as go-queue's Consume does, or `&kq::Message`",
        )),
        _ => errors.push(syn::Error::new_spanned(
            &strings[2],
            "a kq consumer takes at most two `&str` parameters: the key, then the value",
        )),
    }
    params
}

/// The `&mut T` of a parameter type, through parentheses and invisible groups.
fn mutable_reference(ty: &Type) -> Option<&syn::TypeReference> {
    match ty {
        Type::Reference(reference) if reference.mutability.is_some() => Some(reference),
        Type::Group(group) => mutable_reference(&group.elem),
        Type::Paren(paren) => mutable_reference(&paren.elem),
        _ => None,
    }
}

/// `String`, `std::string::String` or `alloc::string::String`.
fn is_owned_string(ty: &Type) -> bool {
    match ty {
        Type::Path(p) if p.qself.is_none() => {
            let segments: Vec<_> = p
                .path
                .segments
                .iter()
                .map(|s| s.arguments.is_none().then(|| s.ident.to_string()))
                .collect();
            let segments: Vec<_> = segments.iter().map(Option::as_deref).collect();
            matches!(
                segments[..],
                [Some("String")] | [Some("std" | "alloc"), Some("string"), Some("String")]
            )
        }
        Type::Group(group) => is_owned_string(&group.elem),
        Type::Paren(paren) => is_owned_string(&paren.elem),
        _ => false,
    }
}

/// A batch parameter: a slice (`&[kq::Message]`) or a `Vec` (`Vec<kq::Json<T>>`). Which
/// element types work is `FromBatch`'s to say.
fn is_batch(ty: &Type) -> bool {
    match ty {
        Type::Reference(reference) if reference.mutability.is_none() => {
            matches!(&*reference.elem, Type::Slice(_))
        }
        Type::Path(p) if p.qself.is_none() => p
            .path
            .segments
            .last()
            .is_some_and(|last| last.ident == "Vec" && !last.arguments.is_none()),
        Type::Group(group) => is_batch(&group.elem),
        Type::Paren(paren) => is_batch(&paren.elem),
        _ => false,
    }
}

/// `&Message` or `Json<T>` (by their last path segment): parameters of a single message.
fn is_single_message_type(ty: &Type) -> bool {
    match ty {
        Type::Reference(reference) => is_single_message_type(&reference.elem),
        Type::Path(p) if p.qself.is_none() => p
            .path
            .segments
            .last()
            .is_some_and(|last| last.ident == "Message" || last.ident == "Json"),
        Type::Group(group) => is_single_message_type(&group.elem),
        Type::Paren(paren) => is_single_message_type(&paren.elem),
        _ => false,
    }
}

fn is_str_ref(ty: &Type) -> bool {
    match ty {
        Type::Reference(reference) if reference.mutability.is_none() => {
            matches!(&*reference.elem, Type::Path(p) if p.qself.is_none() && p.path.is_ident("str"))
        }
        Type::Group(group) => is_str_ref(&group.elem),
        Type::Paren(paren) => is_str_ref(&paren.elem),
        _ => false,
    }
}

fn generate(function: &ItemFn, args: &Args, params: &[Param]) -> TokenStream {
    let krate = &args.krate;
    let private = quote!(#krate::__private);
    let ident = &function.sig.ident;
    let batch = params.iter().any(|param| matches!(param, Param::Batch(_)));
    let (handler, check, reads_headers) = if batch {
        generate_batch(function, &private, params)
    } else {
        generate_single(function, &private, params)
    };
    let entry = if batch {
        quote!(#private::Entry::Batch(__kq_handler))
    } else {
        quote!(#private::Entry::Message(__kq_handler))
    };
    let reads_text = params
        .iter()
        .any(|param| matches!(param, Param::Key | Param::Value));
    let conf = &args.conf;
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| LitStr::new(&ident.unraw().to_string(), ident.span()));
    let some = |value: Option<TokenStream>| match value {
        Some(value) => quote!(::core::option::Option::Some(#value)),
        None => quote!(::core::option::Option::None),
    };
    let retry_attempts = some(args.retry_attempts.as_ref().map(|n| {
        let n = n.base10_digits().parse::<u32>().unwrap_or(1);
        quote!(#n)
    }));
    let dead_letter_topic = some(args.dead_letter_topic.as_ref().map(|t| quote!(#t)));
    let force_commit = some(args.force_commit.as_ref().map(|b| quote!(#b)));
    let batch_size = some(args.batch_size.as_ref().map(|n| {
        let n = n.base10_digits().parse::<usize>().unwrap_or(1);
        quote!(#n)
    }));
    let batch_wait = some(
        args.batch_wait
            .as_ref()
            .map(|(_, nanos)| quote!(::core::time::Duration::from_nanos(#nanos))),
    );

    quote! {
        #function

        const _: () = {
            #handler

            fn __kq_check(
                __kq_ctx: &#private::HandlerContext,
            ) -> ::core::result::Result<(), ::std::string::String> {
                #(#check)*
                ::core::result::Result::Ok(())
            }

            fn __kq_reads_headers() -> bool {
                false #(#reads_headers)*
            }

            #private::inventory::submit! {
                #private::ConsumerRegistration {
                    name: #name,
                    conf: #conf,
                    module_path: ::core::module_path!(),
                    file: ::core::file!(),
                    line: ::core::line!(),
                    handler: #entry,
                    check: __kq_check,
                    reads_headers: __kq_reads_headers,
                    reads_text: #reads_text,
                    policy: #private::PolicyOverrides {
                        retry_attempts: #retry_attempts,
                        dead_letter_topic: #dead_letter_topic,
                        force_commit: #force_commit,
                        batch_size: #batch_size,
                        batch_wait: #batch_wait,
                    },
                }
            }
        };
    }
}

/// A consumer's handler function, its startup checks and its headers flags.
type Generated = (TokenStream, Vec<TokenStream>, Vec<TokenStream>);

/// The names the parameters' values are bound to in the handler.
fn bindings(params: &[Param]) -> Vec<proc_macro2::Ident> {
    (0..params.len())
        .map(|i| format_ident!("__kq_arg{i}"))
        .collect()
}

/// The handler function of a consumer of single messages, its startup checks and its
/// headers flags.
fn generate_single(function: &ItemFn, private: &TokenStream, params: &[Param]) -> Generated {
    let ident = &function.sig.ident;
    let bindings = bindings(params);
    // `FromMessage<'_>`, not a named lifetime: that is how the trait shows in an error on an
    // unsupported parameter type, and the three uses of the type report it once.
    let extract = params.iter().zip(&bindings).map(|(param, binding)| match param {
        Param::Key => quote! { let #binding = #private::key_str(__kq_msg)?; },
        Param::Value => quote! { let #binding = #private::value_str(__kq_msg)?; },
        Param::Extract(ty) | Param::Batch(ty) => quote_spanned! {ty.span()=>
            let #binding = <#ty as #private::FromMessage<'_>>::from_message(__kq_msg, __kq_ctx)?;
        },
    });
    let checks = for_each_type(params, Param::extracted, |ty| {
        quote_spanned! {ty.span()=> <#ty as #private::FromMessage<'_>>::check(__kq_ctx)?; }
    });
    let reads_headers = for_each_type(params, Param::extracted, |ty| {
        quote_spanned! {ty.span()=> || <#ty as #private::FromMessage<'_>>::READS_HEADERS }
    });
    let result = quote_spanned! {output_span(function)=>
        #private::IntoHandlerResult::into_handler_result(__kq_output)
    };
    // The future is coerced to the handler's `BoxFuture` right here, spanned on the
    // function's name, so that one whose future is not `Send` gets one error there, with the
    // compiler's note on the value held across an `.await`, and no bound of a helper.
    let body = quote_spanned! {ident.span()=>
        ::std::boxed::Box::pin(async move {
            #(#extract)*
            let __kq_output = #ident(#(#bindings),*).await;
            #result
        })
    };
    let handler = quote! {
        fn __kq_handler<'a>(
            __kq_msg: &'a #private::Message,
            __kq_ctx: &'a #private::HandlerContext,
        ) -> #private::BoxFuture<
            'a,
            ::core::result::Result<(), #private::HandlerError>,
        > {
            #body
        }
    };
    (handler, checks, reads_headers)
}

/// The handler function of a batch consumer, its startup checks and its headers flags: the
/// batch is taken with `FromBatch` before the future is made, so that the messages it
/// rejects are known at once, and the state with `FromContext`.
fn generate_batch(function: &ItemFn, private: &TokenStream, params: &[Param]) -> Generated {
    let ident = &function.sig.ident;
    let bindings = bindings(params);
    let take = params
        .iter()
        .zip(&bindings)
        .map(|(param, binding)| match param {
            Param::Batch(ty) => quote_spanned! {ty.span()=>
                let #binding = <#ty as #private::FromBatch<'_>>::from_batch(
                    __kq_msgs, __kq_rejected, &mut __kq_positions,
                );
            },
            Param::Extract(ty) => quote_spanned! {ty.span()=>
                let #binding = <#ty as #private::FromContext<'_>>::from_context(__kq_ctx);
            },
            // Refused by `check_function`.
            Param::Key | Param::Value => quote!(),
        });
    let unwrap = params
        .iter()
        .zip(&bindings)
        .filter_map(|(param, binding)| match param {
            Param::Extract(_) => Some(quote! {
                let #binding = #binding.map_err(#private::BatchError::from)?;
            }),
            _ => None,
        });
    let checks = for_each_type(params, Param::extracted, |ty| {
        quote_spanned! {ty.span()=> <#ty as #private::FromContext<'_>>::check(__kq_ctx)?; }
    });
    let reads_headers = for_each_type(params, Param::batch, |ty| {
        quote_spanned! {ty.span()=> || <#ty as #private::FromBatch<'_>>::READS_HEADERS }
    });
    let result = quote_spanned! {output_span(function)=>
        (&&__kq_output).kq_batch_kind().into_batch_result(__kq_output)
    };
    let body = quote_spanned! {ident.span()=>
        ::std::boxed::Box::pin(async move {
            #(#unwrap)*
            let __kq_output = #ident(#(#bindings),*).await;
            #private::batch_result(#result, &__kq_positions, __kq_taken)
        })
    };
    let handler = quote! {
        fn __kq_handler<'a>(
            __kq_msgs: &'a [#private::Message],
            __kq_ctx: &'a #private::HandlerContext,
            __kq_rejected: &mut ::std::vec::Vec<#private::Rejected>,
        ) -> #private::BoxFuture<
            'a,
            ::core::result::Result<(), #private::BatchError>,
        > {
            #[allow(unused_imports)]
            use #private::batch_kind::{ExactKind as _, WholeKind as _};
            let mut __kq_positions = ::std::vec::Vec::new();
            #(#take)*
            let __kq_taken = __kq_msgs.len() - __kq_rejected.len();
            #body
        }
    };
    (handler, checks, reads_headers)
}

/// `make`'s tokens for the type of each parameter that `pick` takes one of.
fn for_each_type(
    params: &[Param],
    pick: impl Fn(&Param) -> Option<&Type>,
    make: impl Fn(&Type) -> TokenStream,
) -> Vec<TokenStream> {
    params.iter().filter_map(pick).map(make).collect()
}

/// Where an error about the function's result points: its return type, or its name when it
/// has none.
fn output_span(function: &ItemFn) -> Span {
    match &function.sig.output {
        ReturnType::Default => function.sig.ident.span(),
        ReturnType::Type(_, ty) => ty.span(),
    }
}
