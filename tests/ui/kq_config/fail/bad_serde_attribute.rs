#[derive(serde::Deserialize, kq::KqConfig)]
#[serde(rename_all = "Pascal")]
struct Config {
    #[serde(rename = 5)]
    conf: kq::KqConf,
}

fn main() {}
