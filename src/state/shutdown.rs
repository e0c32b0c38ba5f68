//! The shutdown token: `POST /v1.0/shutdown` asks through it, and the life
//! cycle waits on it beside the process signals. Cloning shares the token.

use std::sync::Arc;

use tokio::sync::watch;

/// Asks the process to shut down, once, from anywhere it was handed to.
#[derive(Clone)]
pub struct Shutdown(Arc<watch::Sender<bool>>);

impl Default for Shutdown {
    fn default() -> Self {
        Self(Arc::new(watch::Sender::new(false)))
    }
}

impl Shutdown {
    /// Asks the process to shut down.
    pub fn request(&self) {
        self.0.send_replace(true);
    }

    /// Resolves once shutdown was asked for.
    pub async fn requested(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|asked| *asked).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_before_or_after_the_wait_is_seen() {
        let s = Shutdown::default();
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.requested().await }
        });
        s.request();
        waiter.await.unwrap();
        // Asked already: resolves at once.
        tokio::time::timeout(std::time::Duration::from_secs(1), s.requested())
            .await
            .unwrap();
    }
}
