//! The channel object's one alarm, shared by everything that needs a wake-up (retention, key
//! expiry, token expiry, a mirror retry): `Alarm::at_most` only ever moves it earlier, and the
//! alarm handler re-arms it for whatever is still ahead. Also `in_background`, for work that
//! outlives a request.

use std::cell::Cell;
use std::future::Future;
use worker::js_sys::Date as JsDate;
use worker::wasm_bindgen::JsValue;
use worker::wasm_bindgen_futures::future_to_promise;
use worker::worker_sys::DurableObjectState;
use worker::{console_error, ScheduledTime, Storage};

/// What this instance knows of the alarm, so most publishes need no storage call for it.
#[derive(Default)]
pub struct Alarm {
    /// `None`: not read yet; `Some(None)`: no alarm set; `Some(Some(t))`: set for `t`.
    known: Cell<Option<Option<f64>>>,
}

impl Alarm {
    /// The alarm handler is running: the alarm that woke it is spent.
    pub fn fired(&self) {
        self.known.set(Some(None));
    }

    /// Sets the alarm to `at_ms` (unix milliseconds) unless it is already set no later.
    ///
    /// Several callers may run at once (a mirror retry and retention upkeep after the same
    /// publish): what this instance knows is updated before any await that follows a decision,
    /// so the later caller sees the earlier one's alarm and an earlier alarm is never replaced
    /// by a later one. Storage applies the `set_alarm` calls in the order they were made.
    pub async fn at_most(&self, storage: &Storage, at_ms: f64) {
        if self.known.get().is_none() {
            let read = storage.get_alarm().await.ok().flatten().map(|t| t as f64);
            // Another caller may have read, or set, the alarm while this one waited.
            if self.known.get().is_none() {
                self.known.set(Some(read));
            }
        }
        if self.known.get().flatten().is_some_and(|c| c <= at_ms) {
            return;
        }
        self.known.set(Some(Some(at_ms)));
        // `ScheduledTime::from(i64)` would be an offset from now; this is an absolute time.
        let when = ScheduledTime::new(JsDate::new(&JsValue::from_f64(at_ms)));
        if let Err(e) = storage.set_alarm(when).await {
            // Unknown again: the next caller reads what storage really holds.
            self.known.set(None);
            console_error!("edgehub: setting the alarm: {e}");
        }
    }
}

/// Runs `work` after the current request has been answered, kept alive by the runtime.
pub fn in_background(state: &DurableObjectState, work: impl Future<Output = ()> + 'static) {
    let promise = future_to_promise(async move {
        work.await;
        Ok(JsValue::UNDEFINED)
    });
    if let Err(e) = state.wait_until(&promise) {
        console_error!("edgehub: waitUntil refused background work: {e:?}");
    }
}
