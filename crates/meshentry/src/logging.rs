//! Logging to stderr with `tracing`: `--log-level` sets the default, `RUST_LOG` overrides it.
//! Both take `tracing` directives: a level (`debug`), per-module ones
//! (`info,meshentry_proxy=debug`), or both; a mistake in either is an error, not a silent
//! fallback, so an operator never runs at a level they did not ask for.

use std::io::IsTerminal;

use anyhow::bail;
use tracing_subscriber::EnvFilter;

const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

pub fn init(level: &str) -> anyhow::Result<()> {
    let mut filter = filter(level, std::env::var("RUST_LOG").ok().as_deref())?;
    // kube's client logs each failed request as an error; meshentry's watcher already says what
    // failed, what it means (stale configuration) and when it retries. Directives that name
    // kube's modules turn them back on.
    let named = |d: &str| d.contains("kube");
    if !named(level) && !std::env::var("RUST_LOG").is_ok_and(|v| named(&v)) {
        filter = filter.add_directive("kube_client=off".parse()?);
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
    Ok(())
}

/// The filter in force: `RUST_LOG` when set and not empty, else `--log-level` (checked either
/// way: a wrong flag is a mistake even while RUST_LOG hides it).
fn filter(level: &str, rust_log: Option<&str>) -> anyhow::Result<EnvFilter> {
    let flag = parse(level).map_err(|e| anyhow::anyhow!("--log-level {level:?}: {e}"))?;
    match rust_log.map(str::trim).filter(|v| !v.is_empty()) {
        Some(env) => parse(env).map_err(|e| anyhow::anyhow!("RUST_LOG={env:?}: {e}")),
        None => Ok(flag),
    }
}

/// `tracing` directives, checked more strictly than `EnvFilter` does: it reads a bare word
/// that is not a level as a module name (so `--log-level verbose` would log nothing at all).
fn parse(directives: &str) -> anyhow::Result<EnvFilter> {
    for d in directives.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let level = match d.rsplit_once('=') {
            Some((_, level)) => level,
            None if d.contains(['[', ':']) => continue,
            None => d,
        };
        if !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(level.trim())) {
            bail!(
                "{level:?} is not a log level (one of {}), in directive {d:?}; per-module directives are MODULE=LEVEL, e.g. meshentry_proxy=debug",
                LEVELS.join(", ")
            );
        }
    }
    EnvFilter::try_new(directives).map_err(|e| anyhow::anyhow!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_module_directives_are_accepted() {
        for ok in [
            "info",
            "DEBUG",
            "off",
            "warn,meshentry_proxy=debug",
            "meshentry_proxy=trace",
        ] {
            assert!(parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn a_word_that_is_not_a_level_is_refused_with_the_levels() {
        for bad in ["verbose", "info,meshentry_proxy=loud", "=", "meshentry_proxy="] {
            let e = parse(bad).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains("is not a log level"), "{bad}: {e}");
        }
    }

    #[test]
    fn rust_log_overrides_the_flag_and_says_which_was_wrong() {
        let e = filter("info", Some("loud"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.starts_with("RUST_LOG=\"loud\""), "{e}");
        let e = filter("loud", None).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.starts_with("--log-level \"loud\""), "{e}");
        // An empty RUST_LOG is unset, as for env_logger.
        assert!(filter("info", Some(" ")).is_ok());
        // A bad flag is reported even under a good RUST_LOG.
        assert!(filter("loud", Some("debug")).is_err());
        assert!(filter("warn", Some("debug")).is_ok());
    }
}
