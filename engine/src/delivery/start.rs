//! The start state machine: a plugin instance that cannot be created yet
//! is tried again with backoff while its records wait.

use super::*;

/// Wait before the next attempt to create an instance, after `attempts`.
pub(super) fn start_backoff(attempts: u32) -> Duration {
    Duration::from_secs((1u64 << attempts.saturating_sub(1).min(6)).min(60))
}

impl Task {
    /// Starts an attempt to create the plugin instance when one is due.
    pub(super) fn begin_start(&mut self, now: Instant) {
        if let Some(st) = &mut self.starter
            && st.running.is_none()
            && now >= st.next
        {
            let create = st.create.clone();
            st.running = Some(tokio::task::spawn_blocking(move || create()));
        }
    }

    /// The outcome of an attempt to create the plugin instance.
    pub(super) fn started(&mut self, r: Result<SinkInstance, crate::plugin::PluginError>) {
        let Some(st) = &mut self.starter else { return };
        match r {
            Ok(inst) => {
                tracing::info!(destination = %self.id, attempts = st.attempts + 1, "the destination's plugin instance is created; delivering");
                self.sink = Ok(Arc::new(inst));
                self.starter = None;
                self.stats.unhealthy.store(0, Relaxed);
                *self
                    .stats
                    .start_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = None;
            }
            Err(e) if st.deadline.is_some_and(|d| Instant::now() >= d) => {
                let why = format!(
                    "the destination's plugin instance could not be created in {} attempts: {e}",
                    st.attempts + 1
                );
                tracing::error!(destination = %self.id, "{why}; its records are dead-lettered");
                self.stats.start_failed.store(1, Relaxed);
                *self
                    .stats
                    .start_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some((e.to_string(), Instant::now()));
                self.sink = Err(why);
                self.starter = None;
            }
            Err(e) => {
                st.attempts += 1;
                let wait = start_backoff(st.attempts);
                st.next = Instant::now() + wait;
                tracing::warn!(destination = %self.id, attempts = st.attempts, "the destination's plugin instance could not be created ({e}); trying again in {wait:?}");
                let mut slot = self
                    .stats
                    .start_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                let since = slot.as_ref().map_or_else(Instant::now, |(_, t)| *t);
                *slot = Some((e.to_string(), since));
                self.sink = Err(e.to_string());
            }
        }
    }
}
