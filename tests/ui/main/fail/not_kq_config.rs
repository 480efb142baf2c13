#[derive(serde::Deserialize)]
struct Config {
    conf: kq::KqConf,
}

kq::main!(Config);
