//! One client connection once it is accepted: the HTTP/1 fast path, the hyper path (HTTP/1 and HTTP/2), CONNECT tunnels, VirtualService actions, bodies and limits.

/// `AsyncWrite` for an io wrapper `$ty<I>` that writes through its `inner` field, calling its
/// method `$wrote` after each write that took bytes.
macro_rules! write_through {
    ($ty:ident $(, $wrote:ident)?) => {
        const _: () = {
            use std::io::{IoSlice, Result};
            use std::pin::Pin;
            use std::task::{Context, Poll};
            use tokio::io::AsyncWrite;

            impl<I: AsyncWrite + Unpin> $ty<I> {
                fn write_with(&mut self, write: impl FnOnce(Pin<&mut I>) -> Poll<Result<usize>>) -> Poll<Result<usize>> {
                    let r = write(Pin::new(&mut self.inner));
                    $(if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
                        self.$wrote();
                    })?
                    r
                }
            }

            impl<I: AsyncWrite + Unpin> AsyncWrite for $ty<I> {
                fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<Result<usize>> {
                    self.write_with(|inner| inner.poll_write(cx, buf))
                }

                fn poll_write_vectored(
                    mut self: Pin<&mut Self>,
                    cx: &mut Context<'_>,
                    bufs: &[IoSlice<'_>],
                ) -> Poll<Result<usize>> {
                    self.write_with(|inner| inner.poll_write_vectored(cx, bufs))
                }

                fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
                    Pin::new(&mut self.inner).poll_flush(cx)
                }

                fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
                    Pin::new(&mut self.inner).poll_shutdown(cx)
                }

                fn is_write_vectored(&self) -> bool {
                    self.inner.is_write_vectored()
                }
            }
        };
    };
}

pub mod ctx;
pub mod gateway;
pub mod h1;
pub mod h2;
pub(crate) mod h2_resets;
pub mod http;
pub mod limits;
pub mod record;
pub mod routed;
pub mod tunnel;
pub mod vhost;
