//! HTTP request metrics: `durable_streams_http_requests_total{method,
//! route, status}`, `durable_streams_http_request_duration_seconds{method,
//! route}` and `durable_streams_http_requests_in_flight`.
//!
//! Each router keeps a [`RouteTable`]: one [`RouteMetrics`] per route
//! template, whose handles are resolved as methods and statuses first
//! occur, so a request neither builds nor hashes a label set.

use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use ::metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use axum::http::Method;

use super::event::Cached;
use super::{installed, name};

/// The `method` label values: the standard methods by name, anything else
/// `other`, so a client cannot grow the label set.
const METHODS: [&str; 8] = [
    "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "other",
];

/// A request's `method` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MethodLabel(usize);

impl MethodLabel {
    /// The label of `method`.
    pub(crate) fn of(method: &Method) -> Self {
        Self(match *method {
            Method::GET => 0,
            Method::POST => 1,
            Method::PUT => 2,
            Method::DELETE => 3,
            Method::HEAD => 4,
            Method::OPTIONS => 5,
            Method::PATCH => 6,
            _ => 7,
        })
    }

    /// The label text.
    pub(crate) fn as_str(self) -> &'static str {
        METHODS[self.0]
    }
}

/// The `status` label: the three-digit code, or `other`.
fn status_label(status: u16) -> String {
    if (100..600).contains(&status) {
        status.to_string()
    } else {
        "other".to_owned()
    }
}

/// Request counters of one method on one route kept in slots: a route sees
/// a handful of statuses, so a scan beats hashing, and a slot, once set,
/// is read without a lock.
const STATUS_SLOTS: usize = 8;

/// One method's handles on one route.
#[derive(Debug, Default)]
struct MethodMetrics {
    duration: OnceLock<Histogram>,
    /// Request counters by status, filled in order as statuses first occur.
    requests: [OnceLock<(u16, Counter)>; STATUS_SLOTS],
    /// The counters of statuses seen after the slots were full.
    more: RwLock<Vec<(u16, Counter)>>,
}

impl MethodMetrics {
    /// Counts a request answered with `status`; `make` resolves its
    /// counter the first time.
    fn count(&self, status: u16, make: impl FnOnce() -> Counter) {
        let mut make = Some(make);
        for slot in &self.requests {
            // Racing threads set one slot each in turn: a status is never
            // set twice, as each scan stops at the first slot not yet set.
            let (code, counter) = match slot.get() {
                Some(set) => set,
                None => {
                    slot.get_or_init(|| (status, make.take().map_or_else(Counter::noop, |m| m())))
                }
            };
            if *code == status {
                counter.increment(1);
                return;
            }
        }
        {
            let more = self.more.read().unwrap_or_else(PoisonError::into_inner);
            if let Some((_, counter)) = more.iter().find(|(code, _)| *code == status) {
                counter.increment(1);
                return;
            }
        }
        let Some(make) = make else { return };
        let counter = make();
        counter.increment(1);
        let mut more = self.more.write().unwrap_or_else(PoisonError::into_inner);
        if !more.iter().any(|(code, _)| *code == status) {
            more.push((status, counter));
        }
    }
}

/// The metrics of one route template.
#[derive(Debug)]
pub(crate) struct RouteMetrics {
    route: Box<str>,
    methods: [MethodMetrics; METHODS.len()],
}

impl RouteMetrics {
    fn new(route: &str) -> Self {
        Self {
            route: route.into(),
            methods: Default::default(),
        }
    }

    /// The `route` label: the template.
    pub(crate) fn route(&self) -> &str {
        &self.route
    }

    fn duration(&self, method: MethodLabel) -> Histogram {
        histogram!(
            name::HTTP_REQUEST_DURATION_SECONDS,
            "method" => method.as_str(),
            "route" => self.route.to_string()
        )
    }

    fn requests(&self, method: MethodLabel, status: u16) -> Counter {
        counter!(
            name::HTTP_REQUESTS_TOTAL,
            "method" => method.as_str(),
            "route" => self.route.to_string(),
            "status" => status_label(status)
        )
    }
}

/// The routes of one router, found by template.
#[derive(Debug)]
pub(crate) struct RouteTable {
    /// The router's own templates, fixed at build.
    known: Vec<Arc<RouteMetrics>>,
    /// Templates seen since: a router nested under an embedder's prefix
    /// reports its routes with the prefix. Templates come from routers,
    /// never from requests, so this stays small.
    seen: RwLock<Vec<Arc<RouteMetrics>>>,
}

impl RouteTable {
    /// A table of `templates` (and, for requests no route matched,
    /// `unmatched`).
    pub(crate) fn new<'a>(templates: impl IntoIterator<Item = &'a str>) -> Self {
        let mut known: Vec<Arc<RouteMetrics>> = Vec::new();
        for template in templates {
            if !known.iter().any(|route| route.route() == template) {
                known.push(Arc::new(RouteMetrics::new(template)));
            }
        }
        Self {
            known,
            seen: RwLock::default(),
        }
    }

    /// The metrics of `template`.
    pub(crate) fn get(&self, template: &str) -> Arc<RouteMetrics> {
        if let Some(known) = self.known.iter().find(|route| route.route() == template) {
            return known.clone();
        }
        let found = self
            .seen
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|route| route.route() == template)
            .cloned();
        found.unwrap_or_else(|| {
            let mut seen = self.seen.write().unwrap_or_else(PoisonError::into_inner);
            if let Some(raced) = seen.iter().find(|route| route.route() == template) {
                return raced.clone();
            }
            let added = Arc::new(RouteMetrics::new(template));
            seen.push(added.clone());
            added
        })
    }
}

/// A request was answered (its response head is ready, or the client left
/// first: status `499`) after `elapsed`.
pub(crate) struct RequestAnswered<'a> {
    pub route: &'a RouteMetrics,
    pub method: MethodLabel,
    pub status: u16,
    pub elapsed: Duration,
}

impl RequestAnswered<'_> {
    pub(crate) fn emit(self) {
        let Self {
            route,
            method,
            status,
            elapsed,
        } = self;
        if installed().is_none() {
            // Another recorder (or none): it may change, so never cache.
            route.requests(method, status).increment(1);
            route.duration(method).record(elapsed);
            return;
        }
        let slot = &route.methods[method.0];
        slot.duration
            .get_or_init(|| route.duration(method))
            .record(elapsed);
        slot.count(status, || route.requests(method, status));
    }
}

static IN_FLIGHT: Cached<Gauge> = Cached::new(|| gauge!(name::HTTP_REQUESTS_IN_FLIGHT));

/// Requests in flight: one more on creation, one less on drop.
#[derive(Debug)]
pub(crate) struct InFlight(());

impl InFlight {
    pub(crate) fn start() -> Self {
        IN_FLIGHT.with(|g| g.increment(1.0));
        Self(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.with(|g| g.decrement(1.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded() {
        assert_eq!(status_label(200), "200");
        assert_eq!(status_label(599), "599");
        assert_eq!(status_label(99), "other");
        assert_eq!(status_label(600), "other");
        let brew = Method::from_bytes(b"BREW").expect("token");
        assert_eq!(MethodLabel::of(&brew).as_str(), "other");
        assert_eq!(MethodLabel::of(&Method::PATCH).as_str(), "PATCH");
    }

    #[test]
    fn routes_are_found_by_template_and_added_once() {
        let table = RouteTable::new(["/v1/stream/{*name}", "/healthz", "/healthz"]);
        assert_eq!(table.known.len(), 2);
        let a = table.get("/v1/stream/{*name}");
        assert!(Arc::ptr_eq(&a, &table.get("/v1/stream/{*name}")));
        let nested = table.get("/api/v1/stream/{*name}");
        assert!(Arc::ptr_eq(&nested, &table.get("/api/v1/stream/{*name}")));
        assert_eq!(nested.route(), "/api/v1/stream/{*name}");
        RequestAnswered {
            route: &nested,
            method: MethodLabel::of(&Method::GET),
            status: 200,
            elapsed: Duration::from_millis(1),
        }
        .emit();
    }
}
