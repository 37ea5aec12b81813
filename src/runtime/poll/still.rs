//! Still pages (`channel::poll::StillPage`) of one-channel, unfiltered polls: kept by request
//! alone, in this isolate (`STILL`) and in the Cache API (`CACHE_NAME`, shared by the isolates
//! of a data centre where the Cache API works; where it does nothing, as on `workers.dev`, the
//! isolate's copy is all there is). A window, fresh here or read from D1 (one row), says
//! whether one is still the answer.

use super::super::routes::Incoming;
use super::{answer, fresh_window, keep_page, not_modified, read_window, unchanged, Source};
use crate::channel::page_cache::PageCache;
use crate::channel::poll::StillPage;
use crate::channel::Window;
use crate::error::Error;
use crate::protocol::ChannelName;
use std::cell::RefCell;
use std::rc::Rc;
use worker::{Cache, Headers, Response, ResponseBuilder};

thread_local! {
    /// Still pages, by request (`StillKey::isolate`).
    static STILL: RefCell<PageCache<Rc<StillPage>>> = RefCell::new(PageCache::default());
}

/// The Cache API cache that holds still pages.
const CACHE_NAME: &str = "edgehub:poll-pages";
/// How long the Cache API keeps a still page: whether it is still the answer is checked on
/// every use, so this only bounds the space.
const STILL_TTL_SECONDS: u32 = 86_400;
const NEXT_HEADER: &str = "x-edgehub-next";

/// A still page of this request, from this isolate or the Cache API, if it is the answer for
/// the channel's window now (read from D1 unless fresh here). `None` when there is none.
pub(super) async fn still_answer(
    at: &Incoming<'_>,
    channel: &ChannelName,
    key: &StillKey,
    tag: &impl Fn(Window) -> String,
) -> Result<Option<Response>, Error> {
    // The head this isolate saw last, however long ago (heads only grow): a poll at or past
    // it has no still page, and one whose `limit` reaches it most likely has none either
    // (only a page cut by size could be one), so the Cache API is not asked for those: the
    // lookup would cost every poll of a caught-up reader.
    let seen = super::last_window(channel).map(|w| w.head);
    if seen.is_some_and(|head| key.cursor >= head) {
        return Ok(None);
    }
    let (page, source) = match STILL.with(|s| s.borrow_mut().get(&key.isolate)) {
        Some(page) => (page, Source::Isolate),
        None if seen.is_some_and(|head| key.cursor + u64::from(key.limit) >= head) => {
            return Ok(None)
        }
        None => match key.load(at).await {
            Some(page) => (page, Source::Stored),
            None => return Ok(None),
        },
    };
    let window = match fresh_window(at, channel) {
        Some(window) => window,
        None => read_window(at, channel).await?,
    };
    let Some(body) = page.answer(window) else {
        // Pruned or purged past its cursor: never the answer again.
        key.forget(at);
        return Ok(None);
    };
    if let Source::Stored = source {
        STILL.with(|s| s.borrow_mut().put(key.isolate.clone(), page.clone()));
    }
    let etag = tag(window);
    if unchanged(at, &etag) {
        return not_modified(etag).map(Some);
    }
    let body = keep_page(channel.as_str(), &etag, body);
    answer(at, etag, body, source).map(Some)
}

/// Where a still page of one request is kept: its key in this isolate (channel, cursor, limit
/// and page size), and its URL in the Cache API.
pub(super) struct StillKey {
    cursor: u64,
    limit: u32,
    isolate: String,
}

impl StillKey {
    pub(super) fn new(
        at: &Incoming<'_>,
        channel: &ChannelName,
        cursor: u64,
        limit: u32,
    ) -> StillKey {
        let bytes = at.config.max_page_bytes;
        StillKey {
            cursor,
            limit,
            isolate: format!("{channel} {cursor} {limit} {bytes}"),
        }
    }

    /// Its URL in the Cache API: on the request's own origin, so that on Cloudflare it stays in
    /// the zone it serves.
    fn url(&self, at: &Incoming<'_>) -> String {
        let origin = at
            .req
            .target()
            .map(|t| t.origin)
            .unwrap_or_else(|_| "http://edgehub.invalid".into());
        let path = self.isolate.replace(' ', "/");
        format!("{origin}/.edgehub/poll-pages/v1/{path}")
    }

    /// Keeps `page` here, and in the Cache API after the answer has gone.
    pub(super) fn keep(&self, at: &Incoming<'_>, page: Rc<StillPage>) {
        let stored = still_response(&page);
        STILL.with(|s| s.borrow_mut().put(self.isolate.clone(), page));
        let Ok(response) = stored else {
            return;
        };
        let url = self.url(at);
        at.ctx.wait_until(async move {
            // Where the Cache API is missing or off (workers.dev), the isolate's copy is all
            // there is.
            let _ = Cache::open(CACHE_NAME.into())
                .await
                .put(url, response)
                .await;
        });
    }

    /// Drops the page, here and in the Cache API.
    fn forget(&self, at: &Incoming<'_>) {
        STILL.with(|s| s.borrow_mut().remove(&self.isolate));
        let url = self.url(at);
        at.ctx.wait_until(async move {
            let _ = Cache::open(CACHE_NAME.into())
                .await
                .delete(url, false)
                .await;
        });
    }

    /// The still page the Cache API holds for this request, if any.
    async fn load(&self, at: &Incoming<'_>) -> Option<Rc<StillPage>> {
        let cache = Cache::open(CACHE_NAME.into()).await;
        let mut response = cache.get(self.url(at), false).await.ok()??;
        let next = response.headers().get(NEXT_HEADER).ok()??.parse().ok()?;
        let before_head = response.text().await.ok()?;
        Some(Rc::new(StillPage {
            cursor: self.cursor,
            next,
            before_head,
        }))
    }
}

fn still_response(page: &StillPage) -> worker::Result<Response> {
    let headers = Headers::new();
    headers.set(NEXT_HEADER, &page.next.to_string())?;
    headers.set(
        "cache-control",
        &format!("public, max-age={STILL_TTL_SECONDS}"),
    )?;
    Ok(ResponseBuilder::new()
        .with_headers(headers)
        .fixed(page.before_head.clone().into_bytes()))
}

/// The still page kept here for `key`, if it is the answer for `window`.
pub(super) fn answer_here(key: &StillKey, window: Window) -> Option<String> {
    STILL
        .with(|s| s.borrow_mut().get(&key.isolate))?
        .answer(window)
}
