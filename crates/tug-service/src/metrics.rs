//! The server's Prometheus metrics: what happens in this server (counters
//! and histograms in one [`Metrics`] the `Tugboat` holds) and what the
//! database says at the moment of a scrape (agents, rollouts, consumer
//! lag, metric gates: gauges read by a few grouped queries).
//!
//! Each server counts what it did itself; several servers sharing one
//! database are scraped one by one and Prometheus sums them (`sum
//! without (instance) (…)`). The gauges read from the database are the
//! same on every server: take `max without (instance)` rather than a sum.
//!
//! No label names a build except `tug_agents`'s `build`, which reads
//! `embargoed` for a build under embargo: the metrics are read by a
//! scraper's token, which may not see embargoed builds. Labels hold
//! validated names (services, environments, route templates, consumers),
//! never a raw request path, so their number stays bounded.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use tug_core::Action;

use crate::agents::STALE_AFTER;
use crate::{Principal, Result, Tugboat};

/// The content type of [`Tugboat::scrape`]'s answer: Prometheus's text
/// format, which `promtool check metrics` reads.
pub const METRICS_CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Seconds from a build's seal to its deployment: a minute to a month.
const LEAD_TIME_BUCKETS: [f64; 14] = [
    60.0,
    300.0,
    900.0,
    1800.0,
    3600.0,
    10_800.0,
    21_600.0,
    43_200.0,
    86_400.0,
    172_800.0,
    345_600.0,
    604_800.0,
    1_209_600.0,
    2_592_000.0,
];

/// Seconds an approval request waited for its decision: ten seconds to
/// two days.
const APPROVAL_WAIT_BUCKETS: [f64; 12] = [
    10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 10_800.0, 21_600.0, 43_200.0, 86_400.0, 172_800.0,
];

/// Seconds to answer an HTTP request (until the answer's head; a streamed
/// body is not waited for): a millisecond to a minute, long-polls
/// included.
const HTTP_BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeploymentLabels {
    service: String,
    environment: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EnvLabels {
    service: String,
    environment: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    service: String,
    environment: String,
    decision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentLabels {
    service: String,
    environment: String,
    state: String,
    build: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RolloutLabels {
    service: String,
    environment: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConsumerLabels {
    consumer: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// What this server counts as it works.
pub struct Metrics {
    registry: Registry,
    deployments: Family<DeploymentLabels, Counter>,
    lead_time: Histograms<DeploymentLabels>,
    approval_wait: Histograms<DecisionLabels>,
    http_requests: Family<RequestLabels, Counter>,
    http_duration: Histograms<RouteLabels>,
    blob_bytes: Family<DirectionLabels, Counter>,
    delivery_failures: Family<TargetLabels, Counter>,
    gate_samples: Family<EnvLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn lead_time_histogram() -> Histogram {
    Histogram::new(LEAD_TIME_BUCKETS)
}

fn approval_wait_histogram() -> Histogram {
    Histogram::new(APPROVAL_WAIT_BUCKETS)
}

fn http_histogram() -> Histogram {
    Histogram::new(HTTP_BUCKETS)
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::default();
        let deployments = Family::<DeploymentLabels, Counter>::default();
        registry.register(
            "tug_deployments",
            "Deployments made by this server, by service, environment and kind",
            deployments.clone(),
        );
        let lead_time: Histograms<DeploymentLabels> = Family::new_with_constructor(lead_time_histogram);
        registry.register_with_unit(
            "tug_deployment_lead_time",
            "Time from a build's seal to its deployment into an environment",
            Unit::Seconds,
            lead_time.clone(),
        );
        let approval_wait: Histograms<DecisionLabels> = Family::new_with_constructor(approval_wait_histogram);
        registry.register_with_unit(
            "tug_approval_wait",
            "Time from an approval request to each decision on it",
            Unit::Seconds,
            approval_wait.clone(),
        );
        let http_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "tug_http_requests",
            "HTTP requests answered, by route template, method and status",
            http_requests.clone(),
        );
        let http_duration: Histograms<RouteLabels> = Family::new_with_constructor(http_histogram);
        registry.register_with_unit(
            "tug_http_request_duration",
            "Time to answer an HTTP request, until the head of the answer",
            Unit::Seconds,
            http_duration.clone(),
        );
        let blob_bytes = Family::<DirectionLabels, Counter>::default();
        registry.register_with_unit(
            "tug_blob",
            "Blob bytes received (in: stored uploads) and sent (out: downloads)",
            Unit::Bytes,
            blob_bytes.clone(),
        );
        let delivery_failures = Family::<TargetLabels, Counter>::default();
        registry.register(
            "tug_delivery_failures",
            "Failed attempts to deliver an event to a target (a webhook, a GitOps repository)",
            delivery_failures.clone(),
        );
        let gate_samples = Family::<EnvLabels, Counter>::default();
        registry.register(
            "tug_verify_samples",
            "Samples this server took of the metric gates, by service and environment",
            gate_samples.clone(),
        );
        Metrics {
            registry,
            deployments,
            lead_time,
            approval_wait,
            http_requests,
            http_duration,
            blob_bytes,
            delivery_failures,
            gate_samples,
        }
    }
}

impl Metrics {
    /// Counts a deployment, and its build's lead time from its seal when
    /// known.
    pub(crate) fn deployed(&self, service: &str, environment: &str, kind: &str, lead_time: Option<Duration>) {
        let labels = DeploymentLabels {
            service: service.to_string(),
            environment: environment.to_string(),
            kind: kind.to_string(),
        };
        self.deployments.get_or_create(&labels).inc();
        if let Some(t) = lead_time {
            self.lead_time.get_or_create(&labels).observe(t.as_secs_f64());
        }
    }

    /// Observes how long an approval request waited for a decision.
    pub(crate) fn decided(&self, service: &str, environment: &str, decision: &str, waited: Duration) {
        self.approval_wait
            .get_or_create(&DecisionLabels {
                service: service.to_string(),
                environment: environment.to_string(),
                decision: decision.to_string(),
            })
            .observe(waited.as_secs_f64());
    }

    /// Counts an answered HTTP request. `route` is the route's template
    /// (`/v1/builds/{build}`), never the path as sent.
    pub fn request(&self, route: &str, method: &str, status: u16, took: Duration) {
        self.http_requests
            .get_or_create(&RequestLabels {
                route: route.to_string(),
                method: method.to_string(),
                status: status.to_string(),
            })
            .inc();
        self.http_duration
            .get_or_create(&RouteLabels {
                route: route.to_string(),
                method: method.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// Counts blob bytes received into the store.
    pub(crate) fn bytes_in(&self, n: u64) {
        self.blob_bytes
            .get_or_create(&DirectionLabels { direction: "in" })
            .inc_by(n);
    }

    /// The counter of blob bytes sent, for a download's body to add to as
    /// it streams.
    pub(crate) fn bytes_out(&self) -> Counter {
        self.blob_bytes
            .get_or_create_owned(&DirectionLabels { direction: "out" })
    }

    /// Counts a failed attempt to deliver to `target`.
    pub(crate) fn delivery_failed(&self, target: &str) {
        self.delivery_failures
            .get_or_create(&TargetLabels {
                target: target.to_string(),
            })
            .inc();
    }

    /// This server's counters in Prometheus's text format.
    fn encode(&self, text: &mut String) -> std::fmt::Result {
        prometheus_client::encoding::prometheus_text::encode(text, &self.registry)
    }

    pub(crate) fn sampled(&self, service: &str, environment: &str) {
        self.gate_samples
            .get_or_create(&EnvLabels {
                service: service.to_string(),
                environment: environment.to_string(),
            })
            .inc();
    }
}

impl Tugboat {
    /// What this server counts.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Counts one failed attempt to deliver an event to `target` (what
    /// kind of place: `webhook`, `gitops`, `source_tag`; never a URL, which
    /// may be a credential): `tug_delivery_failures_total`.
    pub fn count_delivery_failure(&self, target: &str) {
        self.metrics.delivery_failed(target);
    }

    /// The metrics in Prometheus's text format ([`METRICS_CONTENT_TYPE`]):
    /// this server's counters, then the gauges read from the database now.
    pub async fn scrape(&self, who: &Principal) -> Result<String> {
        self.require(who, Action::ReadMetrics)?;
        let now = self.now();
        let agents = self.db.agent_tallies(now - STALE_AFTER).await?;
        let rollouts = self.db.rollout_tallies().await?;
        let consumers = self.db.consumers().await?;
        let head = self.db.last_event_id().await?;
        let gates = self.db.current_gates().await?;

        let mut gauges = Registry::default();
        let agent_gauge = Family::<AgentLabels, Gauge>::default();
        gauges.register(
            "tug_agents",
            "Agents by service, environment, state (stale: not heard from lately) and build (embargoed: a build under embargo)",
            agent_gauge.clone(),
        );
        for a in agents {
            let build = match (a.build, a.embargoed) {
                (_, true) => "embargoed".to_string(),
                (Some(b), false) => b,
                (None, false) => "none".to_string(),
            };
            agent_gauge
                .get_or_create(&AgentLabels {
                    service: a.service,
                    environment: a.environment,
                    state: a.state,
                    build,
                })
                .inc_by(a.agents);
        }
        let rollout_gauge = Family::<RolloutLabels, Gauge>::default();
        gauges.register(
            "tug_rollout_state",
            "The state of each environment's newest paced rollout (1 for its state)",
            rollout_gauge.clone(),
        );
        for r in rollouts {
            rollout_gauge
                .get_or_create(&RolloutLabels {
                    service: r.service,
                    environment: r.environment,
                    state: r.state,
                })
                .set(1);
        }
        let lag = Family::<ConsumerLabels, Gauge>::default();
        gauges.register(
            "tug_consumer_lag_events",
            "Events of the log a durable consumer has not handled yet (the log's head minus its cursor)",
            lag.clone(),
        );
        for c in consumers {
            lag.get_or_create(&ConsumerLabels { consumer: c.name })
                .set((head - c.cursor).max(0));
        }
        let gate_value = Family::<EnvLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        gauges.register(
            "tug_verify_value",
            "The last value of each environment's metric gate query",
            gate_value.clone(),
        );
        let gate_within = Family::<EnvLabels, Gauge>::default();
        gauges.register(
            "tug_verify_within_bounds",
            "Whether each environment's metric gate was within bounds at its last sample (1) or not (0)",
            gate_within.clone(),
        );
        for g in gates {
            let labels = EnvLabels {
                service: g.service.to_string(),
                environment: g.environment.to_string(),
            };
            if let Some(v) = g.last.value {
                gate_value.get_or_create(&labels).set(v);
            }
            gate_within
                .get_or_create(&labels)
                .set(i64::from(g.within_since.is_some()));
        }

        let mut text = String::new();
        let encoded = self
            .metrics
            .encode(&mut text)
            .and_then(|()| prometheus_client::encoding::prometheus_text::encode(&mut text, &gauges));
        if let Err(e) = encoded {
            // Writing into a String fails only if a metric's encoder does,
            // which none of these do.
            return Err(crate::Error::internal(format!("cannot encode the metrics: {e}")));
        }
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_written_with_their_units_and_total_suffix() {
        let m = Metrics::default();
        m.delivery_failed("webhook-1");
        m.delivery_failed("webhook-1");
        m.deployed("api", "prod", "promote", Some(Duration::from_secs(90)));
        m.request("/v1/builds/{build}", "GET", 200, Duration::from_millis(3));
        m.bytes_in(10);
        m.bytes_out().inc_by(4);
        let mut text = String::new();
        m.encode(&mut text).unwrap();
        for line in [
            "# TYPE tug_delivery_failures_total counter",
            "tug_delivery_failures_total{target=\"webhook-1\"} 2",
            "tug_deployments_total{service=\"api\",environment=\"prod\",kind=\"promote\"} 1",
            "# TYPE tug_deployment_lead_time_seconds histogram",
            "tug_deployment_lead_time_seconds_bucket{service=\"api\",environment=\"prod\",kind=\"promote\",le=\"300\"} 1",
            "tug_http_requests_total{route=\"/v1/builds/{build}\",method=\"GET\",status=\"200\"} 1",
            "tug_blob_bytes_total{direction=\"in\"} 10",
            "tug_blob_bytes_total{direction=\"out\"} 4",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }
}
