//! Metric gates: the sampler that asks Prometheus each gate's query, what
//! it learnt as a fact for the promotion policy, and the gate as `tug
//! status` shows it.
//!
//! The sampler runs beside the requests, like the sweeper. Every server
//! samples: the samples' writes are idempotent and ordered by time (see
//! `tug_db::verify`), so two servers agree without a lease, and a halt
//! goes through the rollout's compare-and-set, so only one server halts a
//! rollout (and rolls it back). A value out of bounds halts a paced
//! rollout; an error or an empty answer does not (it says nothing about
//! the build) but, like a value out of bounds, blocks promotions out of
//! the environment: a gate never passes by default.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use tug_core::pipeline::Verify;
use tug_core::{BuildId, EnvName, Environment, GateFact, ServiceName};
use tug_db::GateSample;

use crate::{Result, Tugboat};

/// How long one query may take, connecting included.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest answer read from Prometheus.
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// The client the gates query Prometheus with: bounded in time, and never
/// following a redirect (the pipeline named the server to ask).
pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(QUERY_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default()
}

/// An environment's gate for its current deployment, as `tug status`
/// shows it.
#[derive(Debug, Clone)]
pub struct GateView {
    pub verify: Verify,
    /// Since when the query has stayed within bounds for the build the
    /// environment runs; `None` when it is not within bounds now.
    pub within_since: Option<DateTime<Utc>>,
    pub last_sample: Option<DateTime<Utc>>,
    pub last_value: Option<f64>,
    /// Why the gate blocks promotions now (the last sample's error, or
    /// that it has not been sampled yet); `None` when within bounds.
    pub blocked: Option<String>,
}

/// Prometheus's answer to `GET /api/v1/query`.
#[derive(Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<AnswerData>,
    #[serde(default)]
    error: Option<String>,
}

/// The result of a query: its type and the result as that type has it.
#[derive(Deserialize)]
struct AnswerData {
    #[serde(rename = "resultType")]
    result_type: String,
    result: serde_json::Value,
}

#[derive(Deserialize)]
struct Series {
    value: (f64, String),
}

/// Why a gate has no sample yet.
const NOT_SAMPLED: &str = "not sampled yet for the build it runs";

impl Tugboat {
    /// Runs until dropped: samples every gate now and every `every`.
    pub async fn verifier(self, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.sample_gates().await {
                tracing::warn!(error = %e, "cannot sample the metric gates; trying again later");
            }
        }
    }

    /// Samples the gate of every environment that has one and runs a
    /// build, all at once.
    pub async fn sample_gates(&self) -> Result<()> {
        let services = self.db.list_services().await?;
        let mut gates = Vec::new();
        for (service, _) in services {
            let Ok(view) = self.pipeline_view(&service).await else {
                continue;
            };
            for environment in view.pipeline.environments {
                if environment.verify.is_some() {
                    gates.push((service.clone(), environment));
                }
            }
        }
        let sampled = futures::future::join_all(gates.iter().map(|(s, e)| self.sample_gate(s, e))).await;
        for ((service, environment), result) in gates.iter().zip(sampled) {
            if let Err(e) = result {
                tracing::warn!(%service, env = %environment.name, error = %e, "cannot sample a metric gate");
            }
        }
        Ok(())
    }

    /// Samples one environment's gate for the deployment it runs, records
    /// the sample, and halts its paced rollout on a value out of bounds.
    async fn sample_gate(&self, service: &ServiceName, environment: &Environment) -> Result<()> {
        let Some(verify) = &environment.verify else {
            return Ok(());
        };
        let pacing = self.pacing(service, environment).await?;
        let Some(build) = pacing.build.clone() else {
            return Ok(());
        };
        let value = self.query_prometheus(verify).await;
        let sample = GateSample {
            at: self.now(),
            value: value.as_ref().ok().copied(),
            error: match &value {
                Ok(v) => verify.judge(*v).err(),
                Err(e) => Some(e.clone()),
            },
        };
        self.metrics.sampled(service.as_str(), environment.name.as_str());
        self.db
            .save_gate_sample(service, &environment.name, pacing.seq, &build, &sample)
            .await?;
        if let (Ok(_), Some(why)) = (&value, &sample.error) {
            self.halt_on_gate(&pacing, &build, &format!("metric gate: {why}"))
                .await?;
        }
        Ok(())
    }

    /// The value of the gate's query now, or why there is none, in words
    /// for the gate's blocking reason.
    async fn query_prometheus(&self, verify: &Verify) -> Result<f64, String> {
        let url = format!("{}/api/v1/query", verify.prometheus);
        let server = &verify.prometheus;
        let mut answer = self
            .prometheus
            .get(&url)
            .query(&[("query", verify.query.as_str())])
            .send()
            .await
            .map_err(|e| format!("Prometheus at {server} is unreachable: {}", reqwest_cause(&e)))?;
        let status = answer.status();
        let mut body = Vec::new();
        while let Some(chunk) = answer
            .chunk()
            .await
            .map_err(|e| format!("Prometheus at {server} broke off its answer: {}", reqwest_cause(&e)))?
        {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(format!(
                    "Prometheus at {server} answered more than {MAX_ANSWER_BYTES} bytes; aggregate the query to one value"
                ));
            }
            body.extend_from_slice(&chunk);
        }
        read_answer(&verify.query, server, status, &body)
    }

    /// What the upstream's gate says of `build`, for a promotion out of
    /// it: the upstream, since when the gate has held and why it does not;
    /// `None` when the upstream has no gate.
    pub(crate) async fn upstream_gate(
        &self,
        service: &ServiceName,
        upstream: &EnvName,
        build: &BuildId,
    ) -> Result<Option<(Environment, Option<DateTime<Utc>>, Option<String>)>> {
        let up = self.environment_of(service, upstream).await?;
        if up.verify.is_none() {
            return Ok(None);
        }
        let state = self.db.env_state(service, upstream).await?;
        if state.current.as_ref().map(|d| &d.build) != Some(build) {
            return Ok(Some((
                up,
                None,
                Some(format!(
                    "the build no longer runs in {upstream}, and the gate counts only while it runs there"
                )),
            )));
        }
        let gate = self.db.gate(service, upstream, state.seq).await?;
        Ok(Some(match gate {
            None => (up, None, None),
            Some(g) => (up, g.within_since, g.last.error),
        }))
    }

    /// The gate of an environment for the deployment it runs (`seq`), as
    /// `tug status` shows it.
    pub(crate) async fn gate_view(
        &self,
        service: &ServiceName,
        environment: &Environment,
        seq: Option<i64>,
    ) -> Result<Option<GateView>> {
        let Some(verify) = &environment.verify else {
            return Ok(None);
        };
        let gate = match seq {
            Some(seq) => self.db.gate(service, &environment.name, seq).await?,
            None => None,
        };
        Ok(Some(match gate {
            None => GateView {
                verify: verify.clone(),
                within_since: None,
                last_sample: None,
                last_value: None,
                blocked: Some(NOT_SAMPLED.into()),
            },
            Some(g) => GateView {
                verify: verify.clone(),
                within_since: g.within_since,
                last_sample: Some(g.last.at),
                last_value: g.last.value,
                blocked: g.last.error,
            },
        }))
    }
}

/// The innermost cause of a client error, which says what went wrong
/// (connection refused, timed out) where reqwest's own message does not.
fn reqwest_cause(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return format!("no answer within {}s", QUERY_TIMEOUT.as_secs());
    }
    let mut cause: &dyn std::error::Error = e;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string()
}

/// The one number Prometheus answered to `query` (asked of `server`, which
/// answered `status` with `body`), or why there is none.
fn read_answer(query: &str, server: &str, status: reqwest::StatusCode, body: &[u8]) -> Result<f64, String> {
    let answer: Answer = serde_json::from_slice(body).map_err(|_| {
        format!("{server} answered {status} with no Prometheus query result; is it Prometheus's address?")
    })?;
    if answer.status != "success" {
        return Err(format!(
            "Prometheus refused query {query}: {}",
            answer.error.as_deref().unwrap_or("no reason given")
        ));
    }
    let number = |text: &str| {
        text.parse::<f64>()
            .map_err(|_| format!("query {query} returned {text:?}, not a number"))
    };
    let not_one = || format!("query {query} returned no instant number; write an expression with one value");
    let data = answer.data.ok_or_else(not_one)?;
    match data.result_type.as_str() {
        "scalar" => {
            let (_, v): (f64, String) = serde_json::from_value(data.result).map_err(|_| not_one())?;
            number(&v)
        }
        "vector" => {
            let series: Vec<Series> = serde_json::from_value(data.result).map_err(|_| not_one())?;
            match series.as_slice() {
                [] => Err(format!(
                    "query {query} returned nothing (no series matched); a gate never passes without a value"
                )),
                [one] => number(&one.value.1),
                many => Err(format!(
                    "query {query} returned {} series; aggregate it to one value (sum, max, …)",
                    many.len()
                )),
            }
        }
        // A range vector or a string.
        _ => Err(not_one()),
    }
}

/// The fact [`tug_core::policy::evaluate`] judges a promotion by.
pub(crate) fn gate_fact<'a>(
    upstream: &'a Environment,
    within_since: Option<DateTime<Utc>>,
    blocked: Option<&'a str>,
) -> Option<GateFact<'a>> {
    Some(GateFact {
        upstream: &upstream.name,
        verify: upstream.verify.as_ref()?,
        within_since,
        blocked,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(body: &str) -> Result<f64, String> {
        read_answer("q", "http://p", reqwest::StatusCode::OK, body.as_bytes())
    }

    #[test]
    fn one_number_is_read_and_everything_else_is_a_reason() {
        let vector =
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1.5,"0.25"]}]}}"#;
        assert_eq!(read(vector), Ok(0.25));
        let scalar = r#"{"status":"success","data":{"resultType":"scalar","result":[1.5,"3"]}}"#;
        assert_eq!(read(scalar), Ok(3.0));
        let nan = r#"{"status":"success","data":{"resultType":"scalar","result":[1.5,"NaN"]}}"#;
        assert!(
            read(nan).unwrap().is_nan(),
            "NaN is a value the gate judges out of bounds"
        );
        for (body, says) in [
            (
                r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#,
                "returned nothing",
            ),
            (
                r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"a":"1"},"value":[1,"1"]},{"metric":{"a":"2"},"value":[1,"2"]}]}}"#,
                "returned 2 series; aggregate it",
            ),
            (
                r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#,
                "no instant number",
            ),
            (
                r#"{"status":"error","errorType":"bad_data","error":"parse error at char 4"}"#,
                "Prometheus refused query q: parse error at char 4",
            ),
            ("<html>a login page</html>", "is it Prometheus's address?"),
            (
                r#"{"status":"success","data":{"resultType":"scalar","result":[1.5,"many"]}}"#,
                "not a number",
            ),
        ] {
            let why = read(body).unwrap_err();
            assert!(why.contains(says), "{body}: {why}");
        }
    }
}
