//! Logs of a plugin call: to `log_file_path` (appended) or standard error, at `log_level`.
//! Standard output is the CNI result and is never written to by logs.

use crate::config::NetConf;

/// Installs the subscriber for this call; logs go nowhere if the file cannot be opened (a
/// plugin must not fail a pod because of its log file).
pub fn init(conf: &NetConf) -> Option<()> {
    let level = match conf.log_level.to_ascii_lowercase().as_str() {
        "error" => tracing::Level::ERROR,
        "warn" | "warning" => tracing::Level::WARN,
        "debug" => tracing::Level::DEBUG,
        "trace" => tracing::Level::TRACE,
        _ => tracing::Level::INFO,
    };
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false)
        .with_target(false);
    match &conf.log_file_path {
        Some(path) => {
            if let Some(parent) = path.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .ok()?;
            builder
                .with_writer(std::sync::Mutex::new(file))
                .try_init()
                .ok()
        }
        None => builder.with_writer(std::io::stderr).try_init().ok(),
    }
}
