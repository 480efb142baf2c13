#[derive(serde::Deserialize, kq::KqConfig)]
enum Config {
    Consumer(kq::KqConf),
}

fn main() {}
