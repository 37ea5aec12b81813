//! The object's background work: when the log next needs pruning, the one alarm (retention,
//! stalled replays, token expiry), and the D1 mirror's catch-up with its retry backoff.

use super::super::alarm;
use super::super::log::KEY_TTL_MS;
use super::super::mirror;
use super::ChannelHub;
use worker::{console_error, Date};

impl ChannelHub {
    /// When the log next needs pruning: the oldest event's age-out or the oldest key's expiry.
    /// `None` when nothing is retained, so an idle empty channel keeps no alarm.
    pub(super) fn next_upkeep(&self) -> Option<i64> {
        let (event, key) = self.log.as_ref()?.oldest().ok()?;
        let event = self.policy().next_expiry(event);
        let key = key.map(|t| t.saturating_add(KEY_TTL_MS));
        event.into_iter().chain(key).min()
    }

    /// Sets the alarm for when a client held by a paced replay would stall, if one is.
    pub(super) async fn check_stall_at(&self, at_ms: Option<i64>) {
        if let Some(at) = at_ms {
            self.alarm.at_most(&self.state.storage(), at as f64).await;
        }
    }

    pub(super) fn schedule_upkeep(&self) {
        let Some(at) = self.next_upkeep() else {
            return;
        };
        let (alarm, storage) = (self.alarm.clone(), self.state.storage());
        alarm::in_background(self.state.as_raw(), async move {
            alarm.at_most(&storage, at as f64).await
        });
    }

    /// Starts a mirror catch-up unless one is running. It runs once the publish's own writes
    /// are durable, i.e. after the output gate has let its answer and its deliveries go: a
    /// publish waits for the object's own storage, never for D1, and its deliveries never queue
    /// behind the mirror's reads and its D1 call (measured under `wrangler dev`, where the
    /// object and the Worker's streams share one isolate: about 0.5 ms of a publish → deliver
    /// p50 of 3.3 ms). A failure retries by alarm with backoff (1 s doubling to 60 s).
    pub(super) fn start_mirror(&self) {
        let Some(log) = self.log.clone() else {
            return;
        };
        if self.mirroring.get() {
            // The running catch-up takes one more pass for what changed.
            self.mirror_again.set(true);
            return;
        }
        let db = match self.env.d1(mirror::BINDING) {
            Ok(db) => db,
            Err(e) => return console_error!("edgehub: no D1 binding: {e}"),
        };
        let fault = self.config.fault_d1_writes;
        self.mirroring.set(true);
        let (mirroring, again, failures, alarm) = (
            self.mirroring.clone(),
            self.mirror_again.clone(),
            self.mirror_failures.clone(),
            self.alarm.clone(),
        );
        let storage = self.state.storage();
        alarm::in_background(self.state.as_raw(), async move {
            // Failing, it is as if it had not waited: the catch-up reads committed rows only.
            let _ = storage.sync().await;
            match mirror::catch_up(&log, &db, fault, &again).await {
                Ok(()) => failures.set(0),
                Err(e) => {
                    let n = failures.get().saturating_add(1);
                    failures.set(n);
                    let backoff = (1000.0 * 2f64.powi(n.min(7) as i32 - 1)).min(60_000.0);
                    console_error!("edgehub: mirroring to D1 failed ({n} in a row), retrying in {backoff} ms: {e}");
                    alarm
                        .at_most(&storage, Date::now().as_millis() as f64 + backoff)
                        .await;
                }
            }
            mirroring.set(false);
        });
    }
}
