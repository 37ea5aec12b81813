//! Reads in flight: requests of one isolate that need the same D1 read at the same moment share
//! it. The first to ask leads (reads, then `land`s what it read); the others wait for that, up
//! to `FOLLOW_MS`, and read on their own if the leader went away without an answer (its client
//! left and the runtime dropped it) or took longer.
//!
//! A follower waits on a promise of its own request, which the leader resolves: its reaction,
//! and so the follower's future, runs in the follower's request (`tap::bell` tells why that
//! matters), and the timer it races keeps that request from looking hung to the runtime.

use futures::future::{select, Either};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::thread::LocalKey;
use std::time::Duration;
use worker::js_sys::{Function, Promise};
use worker::wasm_bindgen::JsValue;
use worker::wasm_bindgen_futures::JsFuture;
use worker::Delay;

/// How long a follower waits for its leader before reading on its own.
const FOLLOW_MS: u64 = 2_000;

/// The reads in flight of one kind, by key.
pub struct Flights<T>(RefCell<HashMap<String, Rc<Flight<T>>>>);

impl<T> Default for Flights<T> {
    fn default() -> Self {
        Flights(RefCell::new(HashMap::new()))
    }
}

pub struct Flight<T> {
    landed: RefCell<Option<T>>,
    /// The followers' promises' resolvers.
    waiting: RefCell<Vec<Function>>,
}

/// What joining a flight gave.
pub enum Joined<T: 'static> {
    /// Nobody was reading this: read, then `land` it.
    Lead(Lead<T>),
    /// Another request read it at the same moment.
    Landed(T),
    /// The leader went away without an answer, or was too slow: read alone.
    Alone,
}

/// Joins the read `key` of `flights`: leads it when nobody is reading it, else waits for it.
pub async fn join<T: Clone + 'static>(
    flights: &'static LocalKey<Flights<T>>,
    key: &str,
) -> Joined<T> {
    let (flight, resolved) = {
        let ahead = flights.with(|f| f.0.borrow().get(key).cloned());
        let Some(flight) = ahead else {
            let flight = Rc::new(Flight {
                landed: RefCell::new(None),
                waiting: RefCell::new(Vec::new()),
            });
            flights.with(|f| f.0.borrow_mut().insert(key.to_string(), flight.clone()));
            return Joined::Lead(Lead {
                flights,
                key: key.to_string(),
                flight,
            });
        };
        let mut resolve = None;
        let promise = Promise::new(&mut |res, _| resolve = Some(res));
        if let Some(resolve) = resolve {
            flight.waiting.borrow_mut().push(resolve);
        }
        (flight, JsFuture::from(promise))
    };
    let timer = Delay::from(Duration::from_millis(FOLLOW_MS));
    if let Either::Right(_) = select(resolved, timer).await {
        return Joined::Alone;
    }
    let landed = flight.landed.borrow().clone();
    landed.map_or(Joined::Alone, Joined::Landed)
}

/// The leader of a read: lands it for the followers, or, dropped without landing, sends them
/// to read alone.
pub struct Lead<T: 'static> {
    flights: &'static LocalKey<Flights<T>>,
    key: String,
    flight: Rc<Flight<T>>,
}

impl<T: 'static> Lead<T> {
    /// Gives `value` to every follower; later requests start a read of their own.
    pub fn land(self, value: T) {
        self.flight.landed.replace(Some(value));
        // Drop ends the flight and wakes the followers.
    }
}

impl<T: 'static> Drop for Lead<T> {
    fn drop(&mut self) {
        self.flights.with(|f| {
            let mut map = f.0.borrow_mut();
            if map
                .get(&self.key)
                .is_some_and(|o| Rc::ptr_eq(o, &self.flight))
            {
                map.remove(&self.key);
            }
        });
        let waiting = std::mem::take(&mut *self.flight.waiting.borrow_mut());
        for resolve in waiting {
            let _ = resolve.call0(&JsValue::UNDEFINED);
        }
    }
}
