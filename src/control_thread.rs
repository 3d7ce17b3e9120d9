//! The control plane's threads: each a tokio current-thread runtime (with a
//! `LocalSet`, so its state may be `Rc`/`RefCell`) on a named OS thread,
//! apart from the data-plane shards. The HTTP admin, the NATS client and the
//! webhook client each get one, so that none of them can delay the others.

use std::future::Future;

/// Runs the future `make` builds on a new thread called `name`, in a
/// current-thread runtime, until it returns.
pub fn spawn<F, Fut>(name: &str, make: F) -> std::io::Result<()>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let label = name.to_owned();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!("{label}: cannot start its runtime: {e}");
                    return;
                }
            };
            tokio::task::LocalSet::new().block_on(&rt, make());
        })?;
    Ok(())
}
