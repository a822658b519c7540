//! curl as the tests run it: a real client that goes only where the test says.

use std::process::Command;

/// What curl reads from the environment that could send a request elsewhere than the test
/// means (a proxy, a bypass list, another config file).
pub const CURL_ENV: [&str; 9] = [
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
    "CURL_HOME",
];

/// `curl -q` (which must come first: no ~/.curlrc) with [`CURL_ENV`] removed, so only `-x`
/// and the URL decide where a request goes. Add the test's own arguments after.
pub fn curl_command() -> Command {
    let mut cmd = Command::new("curl");
    isolate_curl(&mut cmd);
    cmd
}

/// The same for a curl command made elsewhere (e.g. [`crate::Netns::command`]), before any of
/// its own arguments.
pub fn isolate_curl(cmd: &mut Command) -> &mut Command {
    cmd.arg("-q");
    for var in CURL_ENV {
        cmd.env_remove(var);
    }
    cmd
}
