//! CloudWatch Embedded Metric Format (EMF): one JSON line on stdout per job (and a summary at
//! shutdown). CloudWatch Logs turns these lines into metrics, so no agent or PutMetricData call
//! is needed. Logs go to stderr, so stdout carries nothing but EMF.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

/// Unit of a metric value, as CloudWatch names them.
#[derive(Debug, Clone, Copy)]
pub enum Unit {
    Milliseconds,
    Count,
    Percent,
    Megabytes,
}

impl Unit {
    fn as_str(self) -> &'static str {
        match self {
            Unit::Milliseconds => "Milliseconds",
            Unit::Count => "Count",
            Unit::Percent => "Percent",
            Unit::Megabytes => "Megabytes",
        }
    }
}

/// Emits EMF lines and keeps process totals for the shutdown summary.
pub struct Metrics {
    namespace: String,
    service: String,
    totals: Mutex<BTreeMap<String, f64>>,
}

impl Metrics {
    pub fn new(namespace: impl Into<String>, service: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            service: service.into(),
            totals: Mutex::new(BTreeMap::new()),
        }
    }

    /// Writes one EMF line with the given metrics under dimensions `Service` (+ `extra_dims`).
    pub fn emit(&self, extra_dims: &[(&str, &str)], values: &[(&str, f64, Unit)]) {
        if let Ok(mut totals) = self.totals.lock() {
            for (name, v, unit) in values {
                if matches!(unit, Unit::Count) {
                    *totals.entry((*name).to_string()).or_default() += v;
                }
            }
        }
        let line = self.line(extra_dims, values, now_ms());
        let mut out = std::io::stdout().lock();
        // A closed stdout must not take the worker down; metrics are best effort.
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }

    /// Builds an EMF document (separate from [`emit`](Self::emit) so tests can check it).
    pub fn line(
        &self,
        extra_dims: &[(&str, &str)],
        values: &[(&str, f64, Unit)],
        ts: u64,
    ) -> Value {
        let mut doc = Map::new();
        let mut dims = vec![Value::from("Service")];
        doc.insert("Service".into(), Value::from(self.service.clone()));
        for (k, v) in extra_dims {
            dims.push(Value::from(*k));
            doc.insert((*k).into(), Value::from(*v));
        }
        let defs: Vec<Value> = values
            .iter()
            .map(|(name, _, unit)| json!({"Name": name, "Unit": unit.as_str()}))
            .collect();
        for (name, v, _) in values {
            doc.insert((*name).into(), json!(v));
        }
        doc.insert(
            "_aws".into(),
            json!({
                "Timestamp": ts,
                "CloudWatchMetrics": [{
                    "Namespace": self.namespace,
                    "Dimensions": [dims],
                    "Metrics": defs,
                }]
            }),
        );
        Value::Object(doc)
    }

    /// Emits the process totals (called once at shutdown) and returns them.
    pub fn flush(&self) -> BTreeMap<String, f64> {
        let totals = self.totals.lock().map(|t| t.clone()).unwrap_or_default();
        if !totals.is_empty() {
            let values: Vec<(String, f64)> = totals
                .iter()
                .map(|(k, v)| (format!("Total{k}"), *v))
                .collect();
            let refs: Vec<(&str, f64, Unit)> = values
                .iter()
                .map(|(k, v)| (k.as_str(), *v, Unit::Count))
                .collect();
            let line = self.line(&[], &refs, now_ms());
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
        totals
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emf_document_declares_every_metric() {
        let m = Metrics::new("ns", "detection");
        let doc = m.line(
            &[("FailureClass", "permanent")],
            &[
                ("Failures", 1.0, Unit::Count),
                ("ProcessingTime", 12.5, Unit::Milliseconds),
            ],
            42,
        );
        assert_eq!(doc["Service"], "detection");
        assert_eq!(doc["FailureClass"], "permanent");
        assert_eq!(doc["Failures"], 1.0);
        let cw = &doc["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(cw["Namespace"], "ns");
        assert_eq!(cw["Dimensions"][0], json!(["Service", "FailureClass"]));
        assert_eq!(
            cw["Metrics"][1],
            json!({"Name": "ProcessingTime", "Unit": "Milliseconds"})
        );
        assert_eq!(doc["_aws"]["Timestamp"], 42);
    }
}
