//! Giving memory back after a configuration is built.
//!
//! Building a snapshot parses every resource and builds the registry and the clusters at once,
//! then drops most of what it made. glibc keeps freed heap in its arenas (the build runs on a
//! blocking thread with an arena of its own), so without this the resident size stays near the
//! build's peak for the life of the process: at 10,000 ServiceEntries 192 MiB resident for
//! about 110 MiB live. A sidecar's memory is multiplied by the pod count; it is worth a trim.

/// Returns free heap pages to the kernel; how long it took. Blocking (it walks every arena):
/// call it off the data path, once a build and swap are over.
#[allow(unsafe_code)]
pub fn trim() -> std::time::Duration {
    let started = std::time::Instant::now();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own arenas under their locks; any thread may call it.
    unsafe {
        libc::malloc_trim(0);
    }
    started.elapsed()
}
