// Every problem of the derive is reported, not the first only.
#[derive(serde::Deserialize, kq::KqConfig)]
#[kq(crate = 1, strict)]
#[kq(crate = "kq")]
enum Config {
    Consumer(kq::KqConf),
}

fn main() {}
