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
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
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
