#[derive(serde::Deserialize, kq::KqConfig)]
#[kq(crate = "kq", strict)]
struct Config {
    conf: kq::KqConf,
}

fn main() {}
