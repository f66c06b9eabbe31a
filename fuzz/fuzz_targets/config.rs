//! The configuration file, as an operator (or a bad deploy) writes it: loading must end
//! in a configuration or an error naming the key, never a panic, and a configuration
//! that validates must compile into the rules the request path uses, and everything
//! else it describes must compile or name the key at fault.
#![no_main]
use floodgate::config::{Config, ConfigError};
use floodgate::policy::Rules;
use floodgate::proxy::Runtime;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &str| {
    let Ok(config) = toml::from_str::<Config>(data) else {
        return;
    };
    if config.validate().is_ok() {
        Rules::new(&config).expect("a validated configuration compiles");
        match Runtime::compile(config) {
            Ok(_) | Err(ConfigError::Invalid { .. }) => {}
            Err(other) => panic!("a compile error that names no key: {other}"),
        }
    }
});
