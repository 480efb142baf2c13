#[derive(serde::Deserialize, kq::KqConfig)]
struct Config(kq::KqConf);

fn main() {}
