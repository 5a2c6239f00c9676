//! No input panics: every parser of text that a client, a pipeline file or
//! a configuration supplies, and every computation over times and counts,
//! either answers or refuses, for arbitrary and for almost-valid input.
//! Where a parser accepts, what it accepted prints back to an equal value.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use tug_core::pipeline::policies::apply_flags;
use tug_core::pipeline::{
    CountOrShare, EnvironmentSpec, FlagValues, PipelineSpec, RolloutSpec, WindowSpec, MAX_DURATION, MAX_ENVIRONMENTS,
    POLICIES,
};
use tug_core::{
    bump, evaluate, format_duration, next_cloud_version, parse_duration, ArtifactName, BuildFacts, BuildId, CommitId,
    DeployKind, Digest, EnvName, Environment, Part, Pipeline, Platform, Proposal, ServerRule, ServiceName, Share,
    TimeWindow, TokenName, Version,
};

/// The pipeline of the README, with every kind of policy.
const EXAMPLE: &str = r#"
service = "teleport"

[[environments]]
name = "canary"
auto_release = { branch = "master" }
maintenance = [{ weekly = "Mon-Fri 02:00 - 04:00", tz = "UTC" }]

[[environments]]
name = "internal"
upstream = "canary"
soak = "1h"
soak_healthy = "90%"
rollout = { strategy = "canary", count = 2, then = "rolling", max_in_flight = "25%", halt_after_failures = 1, auto_rollback = true }

[[environments]]
name = "trials"
upstream = "internal"
approvals = 1
approval_timeout = "24h"

[[environments]]
name = "production"
upstream = "trials"
approvals = 2
branch_restriction = "^master$"
freeze = [{ weekly = "Sat 00:00 - Mon 06:00", tz = "Europe/Berlin" },
          { from = "2026-12-24T00:00:00Z", until = "2026-12-27T00:00:00Z" },
          { weekly = "22:00 - 02:00", tz = "America/New_York" }]
compatible_with = { service = "teleport-agent", max_major_skew = 1 }

[[environments]]
name = "security"
private = true
"#;

/// Any instant chrono can represent.
fn instant() -> impl Strategy<Value = DateTime<Utc>> {
    let (min, max) = (
        DateTime::<Utc>::MIN_UTC.timestamp(),
        DateTime::<Utc>::MAX_UTC.timestamp(),
    );
    prop_oneof![
        // Anywhere in the representable range…
        (min..=max, 0u32..1_000_000_000),
        // …and, more often, around now, where daylight saving time rules
        // and real deployments are.
        (1_500_000_000i64..2_200_000_000, 0u32..1_000_000_000),
    ]
    .prop_map(|(secs, nanos)| {
        DateTime::from_timestamp(secs, nanos)
            .or_else(|| DateTime::from_timestamp(secs, 0))
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    })
}

/// An IANA time zone name, an abbreviation, or something that is none.
fn time_zone() -> impl Strategy<Value = String> {
    prop_oneof![
        (0..chrono_tz::TZ_VARIANTS.len()).prop_map(|i| chrono_tz::TZ_VARIANTS[i].name().to_string()),
        Just("UTC".to_string()),
        ".{0,40}",
    ]
}

/// Text made of the pieces a window is written with, in any order: more
/// likely than random text to get past the first checks.
fn window_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("Mon".to_string()),
        Just("sat".to_string()),
        Just("Sunday".to_string()),
        Just("Fri".to_string()),
        Just("-".to_string()),
        Just(" - ".to_string()),
        Just(",".to_string()),
        Just(" ".to_string()),
        "[0-9]{1,3}:[0-9]{1,3}",
        "[0-2][0-9]:[0-5][0-9]",
        ".{0,3}",
    ];
    proptest::collection::vec(piece, 0..8).prop_map(|pieces| pieces.concat())
}

/// A window as written, mostly well formed.
fn window_spec() -> impl Strategy<Value = WindowSpec> {
    let rfc3339 = prop_oneof![
        instant().prop_map(|t| t.to_rfc3339()),
        "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(Z|[+-][0-9]{2}:[0-9]{2})",
        ".{0,30}",
    ];
    (
        proptest::option::of(window_text()),
        proptest::option::of(time_zone()),
        proptest::option::of(rfc3339.clone()),
        proptest::option::of(rfc3339),
    )
        .prop_map(|(weekly, tz, from, until)| WindowSpec {
            weekly,
            tz,
            from,
            until,
        })
}

/// A value for any policy's flag: one that fits some policy, or anything.
fn flag_value() -> impl Strategy<Value = String> {
    prop_oneof![
        duration_text(),
        window_text(),
        "[0-9]{1,3}%?",
        Just("true".to_string()),
        Just("canary".to_string()),
        "(strategy|count|then|max_in_flight|halt_after_failures|auto_rollback|x)=(rolling|canary|all-at-once|[0-9]{1,3}%?|true|-1|.{0,3})(,(count|then|max_in_flight|halt_after_failures|auto_rollback)=(rolling|[0-9]{1,3}%?|true|.{0,3})){0,4}",
        ".{0,20}",
    ]
}

fn duration_text() -> impl Strategy<Value = String> {
    prop_oneof!["([0-9]{1,14}[dhms]){1,4}", "[0-9dhms]{0,20}", ".{0,20}",]
}

fn rollout_spec() -> impl Strategy<Value = RolloutSpec> {
    let strategy = prop_oneof![
        Just("all-at-once".to_string()),
        Just("rolling".to_string()),
        Just("canary".to_string()),
        ".{0,12}",
    ];
    let share = prop_oneof![
        any::<u32>().prop_map(CountOrShare::Count),
        "[0-9]{1,4}%".prop_map(CountOrShare::Text),
        ".{0,6}".prop_map(CountOrShare::Text),
    ];
    (
        strategy.clone(),
        proptest::option::of(any::<u32>()),
        proptest::option::of(strategy),
        proptest::option::of(share),
        proptest::option::of(any::<u32>()),
        any::<bool>(),
    )
        .prop_map(
            |(strategy, count, then, max_in_flight, halt_after_failures, auto_rollback)| RolloutSpec {
                strategy,
                count,
                then,
                max_in_flight,
                halt_after_failures,
                auto_rollback,
            },
        )
}

fn environment_spec() -> impl Strategy<Value = EnvironmentSpec> {
    (
        "[a-z0-9_-]{1,8}",
        proptest::option::of("[a-z0-9]{1,8}"),
        proptest::option::of(duration_text()),
        proptest::option::of(duration_text()),
        0u32..20,
        proptest::option::of(prop_oneof![Just("^master$".to_string()), ".{0,12}"]),
        proptest::collection::vec(window_spec(), 0..3),
        proptest::collection::vec(window_spec(), 0..3),
        proptest::option::of(prop_oneof!["[0-9]{1,3}%", ".{0,5}"]),
        proptest::option::of(rollout_spec()),
    )
        .prop_map(
            |(
                name,
                upstream,
                soak,
                approval_timeout,
                approvals,
                branch_restriction,
                freeze,
                maintenance,
                soak_healthy,
                rollout,
            )| {
                EnvironmentSpec {
                    name,
                    upstream,
                    soak,
                    approvals,
                    approval_timeout,
                    branch_restriction,
                    freeze,
                    maintenance,
                    soak_healthy,
                    rollout,
                    ..EnvironmentSpec::default()
                }
            },
        )
}

/// One change to a document: bytes removed, inserted or replaced at a
/// position given as a fraction of its length.
#[derive(Debug, Clone)]
enum Edit {
    Delete { at: f64, len: usize },
    Insert { at: f64, text: String },
    Replace { at: f64, text: String },
}

fn edit() -> impl Strategy<Value = Edit> {
    let text = prop_oneof![
        ".{1,8}",
        Just("\n[[environments]]\nname = \"x\"\n".to_string()),
        Just("\"".to_string()),
        Just("99999999d".to_string()),
        Just("{".to_string()),
        Just("= [".to_string()),
        Just("-".to_string()),
        "[0-9]{1,20}",
    ];
    prop_oneof![
        (0.0..1.0f64, 1usize..40).prop_map(|(at, len)| Edit::Delete { at, len }),
        (0.0..1.0f64, text.clone()).prop_map(|(at, text)| Edit::Insert { at, text }),
        (0.0..1.0f64, text).prop_map(|(at, text)| Edit::Replace { at, text }),
    ]
}

/// Applies `edits` to `doc`, keeping it valid UTF-8 (positions move to the
/// previous character boundary).
fn mutate(doc: &str, edits: &[Edit]) -> String {
    fn floor(doc: &str, mut i: usize) -> usize {
        i = i.min(doc.len());
        while !doc.is_char_boundary(i) {
            i -= 1;
        }
        i
    }
    let mut doc = doc.to_string();
    for e in edits {
        let (at, len, text) = match e {
            Edit::Delete { at, len } => (at, *len, ""),
            Edit::Insert { at, text } => (at, 0, text.as_str()),
            Edit::Replace { at, text } => (at, text.len(), text.as_str()),
        };
        let start = floor(&doc, ((doc.len() as f64) * at) as usize);
        let end = floor(&doc, start + len);
        doc.replace_range(start..end, text);
    }
    doc
}

/// A pipeline that parsed prints back, as TOML and as JSON, to an equal
/// pipeline, and every time question about it can be asked.
fn check_accepted(p: &Pipeline, at: DateTime<Utc>) {
    let text = p.to_toml();
    assert_eq!(&Pipeline::parse(&text).unwrap(), p, "{text}");
    let json = serde_json::to_string(p).unwrap();
    assert_eq!(&serde_json::from_str::<Pipeline>(&json).unwrap(), p, "{json}");
    for env in &p.environments {
        let _ = env.in_maintenance(at);
        let _ = env.freezes_at(at).count();
        assert!(env.soak.is_none_or(|d| d <= MAX_DURATION));
        assert!(env.approval_timeout.is_none_or(|d| d <= MAX_DURATION));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn durations_parse_or_refuse_and_round_trip(text in duration_text()) {
        if let Some(d) = parse_duration(&text) {
            prop_assert!(d > Duration::ZERO);
            prop_assert_eq!(parse_duration(&format_duration(d)), Some(d));
        }
    }

    #[test]
    fn any_duration_formats_and_reads_back(secs in 1u64..) {
        let d = Duration::from_secs(secs);
        let text = format_duration(d);
        // Twelve digits per unit is what the parser reads; beyond that a
        // duration is refused, never misread.
        if let Some(back) = parse_duration(&text) {
            prop_assert_eq!(back, d);
        }
    }

    #[test]
    fn windows_parse_or_refuse_and_answer_for_any_instant(text in window_text(), tz in time_zone(), at in instant()) {
        if let Ok(w) = TimeWindow::weekly(&text, &tz) {
            let _ = w.contains(at);
            let back = TimeWindow::from_spec(&w.to_spec()).unwrap();
            prop_assert_eq!(back, w);
            prop_assert_eq!(back.contains(at), w.contains(at));
            let _ = w.to_string();
        }
    }

    #[test]
    fn window_specs_parse_or_refuse(spec in window_spec(), at in instant()) {
        if let Ok(w) = TimeWindow::from_spec(&spec) {
            let _ = w.contains(at);
            prop_assert_eq!(TimeWindow::from_spec(&w.to_spec()).unwrap(), w);
        }
    }

    #[test]
    fn a_window_in_every_time_zone_answers_for_any_instant(
        zone in 0..chrono_tz::TZ_VARIANTS.len(),
        start in 0u32..24, end in 0u32..24,
        at in instant(),
    ) {
        let tz = chrono_tz::TZ_VARIANTS[zone].name();
        for text in [
            format!("Sat {start:02}:00 - Mon {end:02}:30"),
            format!("Fri-Mon {start:02}:00 - {end:02}:30"),
            format!("{start:02}:15 - {end:02}:45"),
        ] {
            let w = TimeWindow::weekly(&text, tz).unwrap();
            let _ = w.contains(at);
        }
    }

    #[test]
    fn pipelines_parse_or_refuse(text in ".{0,400}", at in instant()) {
        if let Ok(p) = Pipeline::parse(&text) {
            check_accepted(&p, at);
        }
    }

    #[test]
    fn mutated_valid_pipelines_parse_or_refuse(edits in proptest::collection::vec(edit(), 1..6), at in instant()) {
        let text = mutate(EXAMPLE, &edits);
        if let Ok(p) = Pipeline::parse(&text) {
            check_accepted(&p, at);
        }
    }

    #[test]
    fn generated_pipelines_parse_or_refuse(envs in proptest::collection::vec(environment_spec(), 1..6), at in instant()) {
        let spec = PipelineSpec { service: "api".into(), source_repo: None, environments: envs };
        if let Ok(p) = Pipeline::from_spec(&spec) {
            check_accepted(&p, at);
        }
    }

    #[test]
    fn policy_flags_apply_or_refuse(
        given in proptest::collection::vec((0..POLICIES.len(), flag_value()), 1..4),
        tz in proptest::option::of(time_zone()),
        skew in proptest::option::of(any::<u64>().prop_map(|n| n.to_string())),
        at in instant(),
    ) {
        // Each policy's flag with almost-valid and arbitrary values, as
        // `tug policy apply` hands them over after its own parsing.
        let mut flags = FlagValues::new();
        for (i, value) in &given {
            flags.insert(POLICIES[*i].name(), value);
        }
        if let Some(tz) = &tz {
            flags.insert("tz", tz);
        }
        if let Some(skew) = &skew {
            flags.insert("max-major-skew", skew);
        }
        let mut spec = Pipeline::parse(EXAMPLE).unwrap().to_spec();
        if apply_flags(&mut spec.environments[1], &flags).is_ok() {
            if let Ok(p) = Pipeline::from_spec(&spec) {
                check_accepted(&p, at);
            }
        }
    }

    #[test]
    fn rollout_shares_never_overflow(total in any::<u64>(), n in any::<u32>(), p in 1u8..=100) {
        prop_assert_eq!(Share::Count(n).of(total), u64::from(n));
        let of = Share::Percent(p).of(total);
        prop_assert!(of >= 1);
        prop_assert!(of <= total.max(1));
        // Exact where the product fits.
        if let Some(product) = total.checked_mul(u64::from(p)) {
            prop_assert_eq!(of, product.div_ceil(100).max(1));
        }
    }

    #[test]
    fn soak_and_freezes_evaluate_at_any_instants(
        env in environment_spec(),
        now in instant(),
        since in proptest::option::of(instant()),
        healthy_for in proptest::option::of(any::<u64>()),
        major in any::<u64>(),
        oldest in proptest::option::of(any::<u64>()),
        skew in any::<u64>(),
    ) {
        let mut env = env;
        env.upstream = None;
        let Ok(mut env) = Environment::from_spec(&env) else { return Ok(()) };
        env.upstream = Some(EnvName::parse("up").unwrap());
        env.compatible_with = Some(tug_core::Compatibility {
            service: ServiceName::parse("agent").unwrap(),
            max_major_skew: skew,
        });
        let oldest = oldest.map(|m| Version::from(semver::Version::new(m, 0, 0)));
        for kind in [DeployKind::Release, DeployKind::Promote, DeployKind::Rollback, DeployKind::AutoRelease] {
            let proposal = Proposal {
                kind,
                environment: &env,
                build: BuildFacts { branch: Some("master"), sealed: true, yanked: false, embargoed: false, major },
                now,
                in_upstream_since: since,
                passed_upstream: true,
                server_rules: &[],
                override_freeze: false,
                approvals: 0,
                auto_release_held: false,
                upstream_healthy_for: healthy_for.map(Duration::from_secs),
                upstream_gate: None,
                oldest_compatible: oldest.as_ref(),
            };
            let verdict = evaluate(&proposal);
            for v in verdict.violations() {
                prop_assert!(!v.to_string().is_empty());
            }
        }
    }

    #[test]
    fn versions_parse_or_refuse_and_print_back(text in prop_oneof![
        "v?[0-9]{1,21}\\.[0-9]{1,21}\\.[0-9]{1,21}(-[0-9A-Za-z.-]{0,12})?(\\+[0-9A-Za-z.-]{0,8})?",
        ".{0,30}",
    ]) {
        if let Ok(v) = Version::parse(&text) {
            let shown = v.to_string();
            prop_assert!(!shown.starts_with('v'));
            prop_assert_eq!(Version::parse(&shown).unwrap(), v.clone());
            prop_assert_eq!(Version::parse(&format!("v{shown}")).unwrap(), v.clone());
            for part in [Part::Major, Part::Minor, Part::Patch] {
                prop_assert!(bump(&v, part) >= v || v.semver().major == u64::MAX);
            }
        }
    }

    #[test]
    fn cloud_versions_are_versions_or_refused(major in proptest::option::of(any::<u64>()), now in instant(), commit in prop_oneof!["[0-9a-fA-F]{0,70}", ".{0,12}"]) {
        if let Ok(v) = next_cloud_version(major, now, &commit) {
            prop_assert_eq!(Version::parse(&v.to_string()).unwrap(), v);
        }
    }

    #[test]
    fn names_digests_and_commits_parse_or_refuse_and_print_back(text in prop_oneof![
        "[a-z0-9_./-]{0,70}",
        "sha256:[0-9a-fA-F]{60,66}",
        "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        "[0-9a-fA-F]{0,70}",
        ".{0,300}",
    ]) {
        macro_rules! round_trip {
            ($($ty:ty),*) => {$(
                if let Ok(v) = <$ty>::parse(&text) {
                    prop_assert_eq!(v.to_string(), text.clone());
                }
            )*};
        }
        round_trip!(ServiceName, EnvName, ArtifactName, Platform, BuildId, TokenName, CommitId, Digest);
        if let Ok(rule) = ServerRule::parse(&text) {
            prop_assert_eq!(ServerRule::parse(&rule.to_string()).unwrap(), rule);
        }
    }
}

#[test]
fn fifty_thousand_environments_are_refused_quickly() {
    let mut text = String::from("service = \"api\"\n");
    for i in 0..50_000 {
        text.push_str(&format!("[[environments]]\nname = \"e{i}\"\n"));
    }
    let started = std::time::Instant::now();
    let err = Pipeline::parse_submitted(&text).unwrap_err();
    assert!(err.to_string().contains("262144 bytes"), "{err}");
    assert!(started.elapsed() < Duration::from_millis(50), "{:?}", started.elapsed());

    // Under the size limit but over the count: refused before any
    // environment is validated.
    let mut text = String::from("service = \"api\"\n");
    for i in 0..=MAX_ENVIRONMENTS {
        text.push_str(&format!("[[environments]]\nname = \"e{i}\"\n"));
    }
    let err = Pipeline::parse_submitted(&text).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the pipeline has 101 environments: at most 100 are allowed per pipeline"
    );
}

#[test]
fn the_extremes_of_time_are_answered() {
    let w = TimeWindow::weekly("Sat 00:00 - Mon 06:00", "Pacific/Kiritimati").unwrap();
    for at in [
        DateTime::<Utc>::MIN_UTC,
        DateTime::<Utc>::MAX_UTC,
        Utc.timestamp_opt(0, 0).unwrap(),
    ] {
        let _ = w.contains(at);
    }
}
