//! Bells (`runtime::trunk`, `runtime::tap`, `runtime::stream::seat`): a promise made in one request, whose
//! reaction the runtime runs in that request whoever resolves it.

use std::cell::RefCell;
use std::rc::{Rc, Weak};
use worker::js_sys::{Function, Promise};
use worker::wasm_bindgen::closure::Closure;
use worker::wasm_bindgen::JsValue;

/// A promise made in one request whose reaction runs there, whoever resolves it. Its reaction
/// lives as long as the bell, which can be armed again (from its reaction, say) with a new
/// promise; ringing an unarmed bell does nothing, so rings before the reaction ran are one.
pub(super) struct Bell {
    resolve: RefCell<Option<Function>>,
    reaction: Closure<dyn FnMut(JsValue)>,
}

impl Bell {
    /// A bell of the request running now that arms itself again after each ring, in that
    /// request, so it can be rung any number of times.
    pub(super) fn repeating(on_ring: impl Fn() + 'static) -> Rc<Bell> {
        let bell = Rc::new_cyclic(|me: &Weak<Bell>| {
            let me = me.clone();
            Bell {
                resolve: RefCell::new(None),
                reaction: Closure::new(move |_: JsValue| {
                    on_ring();
                    if let Some(bell) = me.upgrade() {
                        bell.arm();
                    }
                }),
            }
        });
        bell.arm();
        bell
    }

    fn arm(&self) {
        let mut resolve = None;
        let promise = Promise::new(&mut |res, _| resolve = Some(res));
        let _ = promise.then(&self.reaction);
        self.resolve.replace(resolve);
    }

    pub(super) fn ring(&self) {
        let resolve = self.resolve.borrow_mut().take();
        if let Some(resolve) = resolve {
            let _ = resolve.call0(&JsValue::UNDEFINED);
        }
    }
}
