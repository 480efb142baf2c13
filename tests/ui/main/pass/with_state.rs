// Both forms of kq::main!, with a state builder returning `S` and one returning `Result<S, E>`.
// Each sits in a module so that this test's own `main` can check their types without running
// a service.

#[derive(serde::Deserialize, kq::KqConfig)]
#[serde(rename_all = "PascalCase")]
pub struct Config {
    kq_consumer_conf: kq::KqConf,
}

pub struct ServiceContext;

impl ServiceContext {
    pub fn new(_: &Config) -> Self {
        ServiceContext
    }

    pub fn try_new(_: &Config) -> Result<Self, kq::Error> {
        Ok(ServiceContext)
    }
}

mod plain {
    kq::main!(super::Config, super::ServiceContext::new);
    pub const ENTRY: fn() -> std::process::ExitCode = main;
}

mod fallible {
    kq::main!(super::Config, super::ServiceContext::try_new);
    pub const ENTRY: fn() -> std::process::ExitCode = main;
}

mod stateless {
    kq::main!(super::Config);
    pub const ENTRY: fn() -> std::process::ExitCode = main;
}

fn main() {
    let _ = [plain::ENTRY, fallible::ENTRY, stateless::ENTRY];
}
