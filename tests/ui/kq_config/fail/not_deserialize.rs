#[derive(kq::KqConfig)]
struct Config {
    conf: kq::KqConf,
}

fn main() {}
