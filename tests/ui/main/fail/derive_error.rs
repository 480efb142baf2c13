// The derive's error is the only one: `kq::main!` still finds a `KqConfig` impl.
#[derive(serde::Deserialize, kq::KqConfig)]
#[kq(crate = "kq", strict)]
struct Config {
    conf: kq::KqConf,
}

kq::main!(Config);
