//! `meshentry`: validate Istio networking resources, show the service registry they describe,
//! and run the proxy that makes it real.

mod cmd;
mod logging;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "meshentry",
    version,
    long_version = meshentry_admin::build_info::LONG_VERSION,
    about = "Istio ServiceEntry system: validator, service registry and egress proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check Istio resources and report every problem with file, line and field.
    Validate(cmd::validate::Args),
    /// Print the service registry the resources describe.
    Registry(cmd::registry::Args),
    /// Run the proxy: route outbound traffic through the registry.
    Proxy(Box<cmd::proxy::Args>),
    /// Explain, step by step, how the proxy would route a request (listener, service,
    /// VirtualService rule, DestinationRule policy, endpoints), or why it would refuse it.
    Explain(Box<cmd::explain::Args>),
    /// Install or remove the iptables rules that capture outbound traffic into the proxy.
    Iptables(cmd::iptables::Args),
    /// A small mesh CA: issue SPIFFE workload identities for ISTIO_MUTUAL.
    Ca(cmd::ca::Args),
    /// Print the version, the commit and compiler it was built with, its target and the Istio
    /// APIs it reads (the same as `--version` and the admin server's `/server_info`).
    Version(VersionArgs),
}

#[derive(clap::Args)]
struct VersionArgs {
    /// text, or json for tools.
    #[arg(short, long, default_value = "text", value_parser = ["text", "json"])]
    output: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate(args) => cmd::validate::run(&args),
        Command::Registry(args) => cmd::registry::run(&args),
        Command::Proxy(args) => cmd::proxy::run(&args),
        Command::Explain(args) => cmd::explain::run(&args),
        Command::Iptables(args) => cmd::iptables::run(&args),
        Command::Ca(args) => cmd::ca::run(&args),
        Command::Version(args) => {
            if args.output == "json" {
                println!("{:#}", meshentry_admin::build_info::json());
            } else {
                print!("{}", meshentry_admin::build_info::text());
            }
            Ok(ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        // The reader went away (`meshentry explain ... | head -1`): it has what it wanted, and
        // there is no one left to tell.
        Err(e)
            if e.chain().any(|c| {
                let kind = c
                    .downcast_ref::<std::io::Error>()
                    .map(std::io::Error::kind)
                    .or_else(|| {
                        c.downcast_ref::<serde_json::Error>()
                            .and_then(serde_json::Error::io_error_kind)
                    });
                kind == Some(std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("meshentry: {}", one_line(&e));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes on one line, as anyhow's `{:#}`, except that a cause its parent's
/// message already ends with is not said again (errors that put their source in their own
/// message, as many do: `path: No such file or directory (os error 2)` once, not twice).
fn one_line(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// Every option and argument of every subcommand, with the path of subcommands to it.
    fn all_args(cmd: &clap::Command, path: &str, out: &mut Vec<(String, clap::Arg)>) {
        for arg in cmd.get_arguments() {
            out.push((path.to_string(), arg.clone()));
        }
        for sub in cmd.get_subcommands() {
            all_args(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }

    #[test]
    fn every_option_has_help_text() {
        let cmd = Cli::command();
        cmd.clone().debug_assert();
        let mut args = Vec::new();
        all_args(&cmd, "meshentry", &mut args);
        assert!(args.len() > 100, "the walk found only {} arguments", args.len());
        let missing: Vec<String> = args
            .iter()
            .filter(|(_, a)| a.get_help().is_none_or(|h| h.to_string().trim().is_empty()))
            .map(|(path, a)| {
                format!(
                    "{path} {}",
                    a.get_long()
                        .map_or_else(|| a.get_id().to_string(), |l| format!("--{l}"))
                )
            })
            .collect();
        assert!(missing.is_empty(), "options without help text: {missing:#?}");
    }

    #[test]
    fn every_subcommand_has_a_summary() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for sub in cmd.get_subcommands() {
                let path = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() {
                    missing.push(path.clone());
                }
                walk(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "meshentry", &mut missing);
        assert!(missing.is_empty(), "subcommands without a summary: {missing:?}");
    }
}
