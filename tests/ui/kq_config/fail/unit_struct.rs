#[derive(serde::Deserialize, kq::KqConfig)]
struct Config;

fn main() {}
