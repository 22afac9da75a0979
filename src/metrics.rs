//! Prometheus metrics (docs/api.md, "Metrics"), held as a struct in the server's state — no globals. Labels
//! are bounded: plan names, step types, result and reason categories; never alert label values.

use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

pub struct Metrics {
    registry: Registry,
    pub alerts_received: IntCounterVec,
    pub plan_matches: IntCounterVec,
    pub runs: IntCounterVec,
    pub runs_deduplicated: IntCounterVec,
    pub run_duration: HistogramVec,
    pub step_duration: HistogramVec,
    pub step_failures: IntCounterVec,
    pub active_runs: IntGauge,
    pub plans_loaded: IntGauge,
    pub plans_invalid: IntGauge,
    pub store_healthy: IntGauge,
    pub store_failures: IntCounterVec,
    pub http_connections_open: IntGauge,
    pub http_connections_refused: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels).expect("valid metric");
            registry.register(Box::new(h.clone())).expect("unique metric");
            h
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        Metrics {
            alerts_received: counter(
                "recoverd_alerts_received_total",
                "Alerts received, by their own status.",
                &["status"],
            ),
            plan_matches: counter(
                "recoverd_plan_matches_total",
                "Firing alerts that matched a plan.",
                &["plan"],
            ),
            runs: counter("recoverd_runs_total", "Finished runs, by result.", &["plan", "result"]),
            runs_deduplicated: counter(
                "recoverd_runs_deduplicated_total",
                "Triggers that did not start a run, by reason.",
                &["plan", "reason"],
            ),
            run_duration: histogram(
                "recoverd_run_duration_seconds",
                "Duration of finished runs.",
                &["plan"],
                vec![1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0],
            ),
            step_duration: histogram(
                "recoverd_step_duration_seconds",
                "Duration of finished steps.",
                &["plan", "type"],
                vec![0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0],
            ),
            step_failures: counter(
                "recoverd_step_failures_total",
                "Failed steps, by reason.",
                &["plan", "type", "reason"],
            ),
            active_runs: gauge(
                "recoverd_active_runs",
                "Runs executing or waiting for approval now, as the run store holds them (with --store kube: cluster-wide, the same at every replica).",
            ),
            plans_loaded: gauge("recoverd_plans_loaded", "Valid plans loaded."),
            plans_invalid: gauge(
                "recoverd_plans_invalid",
                "Plans (or plan files) that failed to load or validate.",
            ),
            store_healthy: gauge(
                "recoverd_store_healthy",
                "1 while the run store takes writes and is the file it was opened as, else 0.",
            ),
            store_failures: counter(
                "recoverd_store_failures_total",
                "Failed run store writes and health checks, by reason.",
                &["reason"],
            ),
            http_connections_open: gauge("recoverd_http_connections_open", "Connections to the API open now."),
            http_connections_refused: counter(
                "recoverd_http_connections_refused_total",
                "Connections closed as soon as they were accepted, by the limit they were over.",
                &["reason"],
            ),
            registry,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding");
        String::from_utf8(buf).expect("metrics are UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
