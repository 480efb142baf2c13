//! Procedural macros of [kq](https://docs.rs/kq). Use them through the `kq` crate:
//! `#[kq::consumer]` and `#[derive(kq::KqConfig)]`.

use proc_macro::TokenStream;

mod attr;
mod consumer;
mod kq_config;

/// Registers an `async fn` as the handler of a consumer queue. See `kq::consumer`.
#[proc_macro_attribute]
pub fn consumer(args: TokenStream, item: TokenStream) -> TokenStream {
    consumer::expand(args.into(), item.into()).into()
}

/// Lets the runtime find the `KqConf` and `PusherConf` fields of a config struct by key.
/// See `kq::KqConfig`.
#[proc_macro_derive(KqConfig, attributes(kq))]
pub fn derive_kq_config(input: TokenStream) -> TokenStream {
    kq_config::expand(input.into()).into()
}
