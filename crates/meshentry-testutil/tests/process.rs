//! ProxyProcess runs a real child process, captures its output and waits for it to listen.

use std::time::Duration;

use meshentry_testutil::{ProxyProcess, free_port, unique_loopback};

/// python3 stands in for the proxy binary: it listens on an address given in the environment.
#[tokio::test]
async fn waits_for_the_child_to_listen_and_captures_output() {
    let ip = unique_loopback();
    let port = free_port(ip);
    let script = "import os,socket,sys,time\n\
                  print('starting', flush=True)\n\
                  time.sleep(0.3)\n\
                  s=socket.socket(); s.bind((os.environ['ADDR'], int(os.environ['PORT']))); s.listen()\n\
                  print('oops', file=sys.stderr, flush=True)\n\
                  time.sleep(60)\n";
    let mut p = ProxyProcess::spawn(
        "python3",
        ["-c", script],
        [("ADDR", ip.to_string()), ("PORT", port.to_string())],
    );
    p.wait_listening((ip, port).into(), Duration::from_secs(10)).await;
    assert!(p.stdout().contains("starting"));
    meshentry_testutil::eventually(Duration::from_secs(5), || async { p.stderr().contains("oops") }).await;
    p.terminate();
    let status = p.wait_exit(Duration::from_secs(5)).await;
    assert!(!status.success());
}

#[tokio::test]
#[should_panic(expected = "exited with")]
async fn a_child_that_exits_early_fails_with_its_output() {
    let ip = unique_loopback();
    let mut p = ProxyProcess::spawn("sh", ["-c", "echo bad flag >&2; exit 2"], [("X", "1")]);
    p.wait_listening((ip, 1234).into(), Duration::from_secs(10)).await;
}
