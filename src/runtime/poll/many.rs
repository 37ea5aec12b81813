//! `GET /poll?channel=a&channel=b…`: the one-channel poll's rules over a set of channels.

use super::super::routes::{stream_since, Incoming};
use super::super::{mirror, topic_poll};
use super::{
    answer, cached_page, fresh_window, keep_page, limit, mirror_db, not_modified, now_ms,
    read_once, remember, unchanged, Answer, Source,
};
use crate::auth::Action;
use crate::channel::poll_many::{cut_many, ManyRequest};
use crate::channel::Window;
use crate::error::Error;
use crate::protocol::filter::{Filter, FilterSpec};
use crate::protocol::stream::ChannelSet;
use crate::protocol::ChannelName;

/// `GET /poll?channel=a&channel=b…`: the same rules as `poll`, over a set of channels, in one
/// D1 query; a 304 without D1 when every channel's window is in this isolate's cache. Its
/// pages are kept by window only (layer 1), and its reads are shared (layer 3).
pub async fn poll_many(at: &Incoming<'_>) -> Answer {
    let set = ChannelSet::parse(&at.query, at.config.max_stream_channels)?;
    at.credentials
        .permits(at.env, at.config)?
        .check_all(at.config, Action::Subscribe, &set)?;
    let since = stream_since(&at.query, &set)?;
    let request = ManyRequest::new(set, since.as_ref(), limit(at)?, at.config.max_page_bytes);
    let filter = Filter::parse(&FilterSpec::from_query(&at.query)?)?;
    let tag = |windows: &[Window]| {
        let etag = request.etag(windows);
        filter
            .as_ref()
            .map_or(etag.clone(), |f| topic_poll::etag(&etag, f))
    };
    // The tag is a digest: the page is kept under the request itself too.
    let key = match &filter {
        Some(f) => format!("{} t{}", request.key(), f.key()),
        None => request.key(),
    };
    let channels = request.set.channels();
    let cached: Option<Vec<Window>> = channels.iter().map(|c| fresh_window(at, c)).collect();
    if let Some(etag) = cached.map(|w| tag(&w)) {
        if unchanged(at, &etag) {
            return not_modified(etag);
        }
        if let Some(page) = cached_page(&key, &etag) {
            return answer(at, etag, page, Source::Isolate);
        }
    }
    let read = || async {
        let db = mirror_db(at).await?;
        let (windows, body) = if let Some(filter) = &filter {
            let lanes: Vec<(&ChannelName, Option<u64>)> = channels
                .iter()
                .zip(request.cursors().iter().copied())
                .collect();
            let read =
                topic_poll::read(&db, &lanes, filter, request.limit, request.max_bytes).await?;
            let windows = read.windows.clone();
            (windows, read.many_page(channels).encode())
        } else {
            let (windows, rows) = mirror::read_many(&db, &request)
                .await
                .map_err(|e| Error::Unavailable(format!("reading the mirror: {e}")))?;
            let body = cut_many(&request, &windows, rows).encode();
            (windows, body)
        };
        let now = now_ms();
        for (c, window) in channels.iter().zip(&windows) {
            remember(c, *window, now);
        }
        let etag = tag(&windows);
        let body = keep_page(&key, &etag, body);
        Ok::<_, Error>((etag, body))
    };
    if at.config.poll_cache_ms <= 0 {
        let (etag, body) = read().await?;
        return answer(at, etag, body, Source::Mirror);
    }
    let (etag, body, source) = read_once(&key, read).await?;
    answer(at, etag, body, source)
}
