//! A minimal process-wide `metrics` recorder for assertions: counters and
//! gauges by `name{label=value,…}`. The recorder is global, so tests assert
//! deltas (other tests in the binary record too).

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};

#[derive(Default)]
struct Probe {
    values: Mutex<HashMap<String, Arc<AtomicU64>>>,
}

fn render(key: &Key) -> String {
    let mut labels: Vec<String> = key
        .labels()
        .map(|label| format!("{}={}", label.key(), label.value()))
        .collect();
    if labels.is_empty() {
        return key.name().to_owned();
    }
    labels.sort();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

impl Probe {
    fn slot(&self, key: &Key) -> Arc<AtomicU64> {
        let mut values = self.values.lock().expect("probe lock");
        Arc::clone(values.entry(render(key)).or_default())
    }
}

impl Recorder for Probe {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.slot(key))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.slot(key))
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

static PROBE: OnceLock<&'static Probe> = OnceLock::new();

/// Installs the probe as the global recorder (once per process).
pub fn install() {
    PROBE.get_or_init(|| {
        let probe: &'static Probe = Box::leak(Box::default());
        metrics::set_global_recorder(probe).expect("no other recorder in this test binary");
        probe
    });
}

/// A counter's value, `0` if never recorded.
pub fn counter(rendered: &str) -> u64 {
    PROBE
        .get()
        .and_then(|probe| {
            probe
                .values
                .lock()
                .expect("probe lock")
                .get(rendered)
                .map(|value| value.load(Ordering::Relaxed))
        })
        .unwrap_or(0)
}

/// A gauge's value, if ever recorded.
pub fn gauge(rendered: &str) -> Option<f64> {
    PROBE.get().and_then(|probe| {
        probe
            .values
            .lock()
            .expect("probe lock")
            .get(rendered)
            .map(|value| f64::from_bits(value.load(Ordering::Relaxed)))
    })
}
