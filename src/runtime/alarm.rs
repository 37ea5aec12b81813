//! The channel object's one alarm, shared by everything that needs a wake-up (a mirror retry, the
//! next token expiry): `at_most` only ever moves it earlier, and the alarm handler re-arms it for
//! whatever is still ahead. Also `in_background`, for work that outlives a request.

use std::future::Future;
use worker::js_sys::Date as JsDate;
use worker::wasm_bindgen::JsValue;
use worker::wasm_bindgen_futures::future_to_promise;
use worker::{console_error, ScheduledTime, State, Storage};

/// Sets the alarm to `at_ms` (unix milliseconds) unless it is already set earlier.
pub async fn at_most(storage: &Storage, at_ms: f64) {
    let current = storage.get_alarm().await.ok().flatten();
    if current.is_some_and(|c| (c as f64) <= at_ms) {
        return;
    }
    // `ScheduledTime::from(i64)` would be an offset from now; this is an absolute time.
    let when = ScheduledTime::new(JsDate::new(&JsValue::from_f64(at_ms)));
    if let Err(e) = storage.set_alarm(when).await {
        console_error!("edgehub: setting the alarm: {e}");
    }
}

/// Runs `work` after the current request has been answered, kept alive by the runtime.
pub fn in_background(state: &State, work: impl Future<Output = ()> + 'static) {
    let promise = future_to_promise(async move {
        work.await;
        Ok(JsValue::UNDEFINED)
    });
    if let Err(e) = state.as_raw().wait_until(&promise) {
        console_error!("edgehub: waitUntil refused background work: {e:?}");
    }
}
