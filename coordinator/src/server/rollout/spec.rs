//! The rollout spec: `--stages`, the limits (`--max-in-flight`, `--max-failures`),
//! `--on-failure` and the rest of `drover rollout plan|start`, parsed and validated into a
//! [`RolloutSpec`]; every bad field is reported at once ([`SpecErrors`]).

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use drover_protocol::{AppName, Duration, Version};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A bound given as a number of hosts (`5`) or a share of the rollout's hosts (`10%`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    /// A number of hosts.
    Count(u32),
    /// A percentage, 0 to 100, of the rollout's hosts.
    Percent(u8),
}

impl Limit {
    /// The bound for `total` hosts rounded up, for limits that must allow progress:
    /// 10% of 15 hosts lets 2 change at once.
    pub fn ceil_of(self, total: usize) -> usize {
        match self {
            Limit::Count(count) => count as usize,
            Limit::Percent(percent) => (total.saturating_mul(usize::from(percent))).div_ceil(100),
        }
    }

    /// The bound for `total` hosts rounded down, for budgets: with 5% of 30 hosts, one
    /// failure is allowed (1 of 30 is 3.3%) and the second trips the breaker.
    pub fn floor_of(self, total: usize) -> usize {
        match self {
            Limit::Count(count) => count as usize,
            Limit::Percent(percent) => total.saturating_mul(usize::from(percent)) / 100,
        }
    }

    fn parse(field: &'static str, text: &str) -> Result<Limit, SpecError> {
        let error = || SpecError::new(field, text, "a number of hosts (e.g. 5) or a percentage (e.g. 10%)");
        match text.strip_suffix('%') {
            Some(number) => match number.parse::<u8>() {
                Ok(percent) if percent <= 100 && !number.starts_with('+') => Ok(Limit::Percent(percent)),
                _ => Err(error()),
            },
            None if text.starts_with('+') => Err(error()),
            None => text.parse().map(Limit::Count).map_err(|_| error()),
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::Count(count) => write!(f, "{count}"),
            Limit::Percent(percent) => write!(f, "{percent}%"),
        }
    }
}

/// One stage as the operator asked for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageSpec {
    /// One host (only as the first stage).
    Canary,
    /// The rollout grows to this percentage (1 to 100) of all its hosts.
    Percent(u8),
    /// The hosts of this group not in an earlier stage.
    Group(String),
}

impl fmt::Display for StageSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StageSpec::Canary => f.write_str("canary"),
            StageSpec::Percent(percent) => write!(f, "{percent}%"),
            StageSpec::Group(name) => f.write_str(name),
        }
    }
}

/// A validated list of stages: an optional `canary` first, then either increasing
/// percentages ending at 100% or distinct group names. `canary` is a keyword, not a group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<StageSpec>", into = "Vec<StageSpec>")]
pub struct Stages(Vec<StageSpec>);

impl Stages {
    /// Checks `stages` (see the type's rules).
    pub fn new(stages: Vec<StageSpec>) -> Result<Stages, SpecError> {
        let text = stages.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
        let error = |expected: &str| SpecError::new("stages", &text, expected);
        if stages.is_empty() {
            return Err(error(
                "at least one stage, e.g. canary,10%,50%,100% or canary,group-a,group-b",
            ));
        }
        let mut last_percent = 0;
        let mut groups = BTreeSet::new();
        for (index, stage) in stages.iter().enumerate() {
            match stage {
                StageSpec::Canary if index == 0 => {}
                StageSpec::Canary => return Err(error("canary only as the first stage")),
                StageSpec::Percent(percent) if !(1..=100).contains(percent) => {
                    return Err(error("percentages from 1% to 100%"));
                }
                StageSpec::Percent(percent) if *percent <= last_percent => {
                    return Err(error("percentages in increasing order, e.g. 10%,50%,100%"));
                }
                StageSpec::Percent(percent) => last_percent = *percent,
                StageSpec::Group(name) if !is_group_name(name) => {
                    return Err(error(
                        "group names of a-z, 0-9 and '-' (1 to 63, not starting with '-')",
                    ));
                }
                StageSpec::Group(name) => {
                    if !groups.insert(name.as_str()) {
                        return Err(error("each group once"));
                    }
                }
            }
        }
        if last_percent > 0 && !groups.is_empty() {
            return Err(error("either percentages or groups, not both"));
        }
        if last_percent > 0 && last_percent != 100 {
            return Err(error("percentages ending with 100%, so that every host is in a stage"));
        }
        Ok(Stages(stages))
    }

    /// The stages in order.
    pub fn as_slice(&self) -> &[StageSpec] {
        &self.0
    }
}

fn is_group_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
}

impl FromStr for Stages {
    type Err = SpecError;

    /// `canary,10%,50%,100%` or `canary,group-a,group-b` (the CLI's `--groups a,b` is the same list).
    fn from_str(text: &str) -> Result<Stages, SpecError> {
        let stages = text
            .split(',')
            .map(str::trim)
            .map(|item| match item {
                "" => Err(SpecError::new(
                    "stages",
                    text,
                    "a comma-separated list without empty items, e.g. canary,10%,100%",
                )),
                "canary" => Ok(StageSpec::Canary),
                _ => match item.strip_suffix('%') {
                    Some(number) => number
                        .parse::<u8>()
                        .ok()
                        .filter(|_| !number.starts_with('+'))
                        .map(StageSpec::Percent)
                        .ok_or_else(|| SpecError::new("stages", text, "percentages from 1% to 100%")),
                    None => Ok(StageSpec::Group(item.to_owned())),
                },
            })
            .collect::<Result<Vec<_>, _>>()?;
        Stages::new(stages)
    }
}

impl TryFrom<Vec<StageSpec>> for Stages {
    type Error = SpecError;
    fn try_from(stages: Vec<StageSpec>) -> Result<Stages, SpecError> {
        Stages::new(stages)
    }
}

impl From<Stages> for Vec<StageSpec> {
    fn from(stages: Stages) -> Vec<StageSpec> {
        stages.0
    }
}

impl fmt::Display for Stages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, stage) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str(",")?;
            }
            write!(f, "{stage}")?;
        }
        Ok(())
    }
}

/// What crossing the failure budget does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Stop pinning and wait for the operator (the default).
    Pause,
    /// Unpin every host that took the target, returning it to its previous release.
    Rollback,
}

impl FromStr for OnFailure {
    type Err = SpecError;
    fn from_str(text: &str) -> Result<OnFailure, SpecError> {
        match text {
            "pause" => Ok(OnFailure::Pause),
            "rollback" => Ok(OnFailure::Rollback),
            _ => Err(SpecError::new("on-failure", text, "pause or rollback")),
        }
    }
}

/// How to roll an app out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutSpec {
    /// The app.
    pub app: AppName,
    /// The release every host should end up on.
    pub target: Version,
    /// The stages, in order.
    pub stages: Stages,
    /// Most hosts changing at once (pinned to the target, neither healthy on it nor failed).
    pub max_in_flight: Limit,
    /// How long a stage must stay healthy after its last host settled before the next starts.
    pub bake: Duration,
    /// Most failures tolerated; one more trips the breaker.
    pub max_failures: Limit,
    /// What the breaker does.
    pub on_failure: OnFailure,
    /// Whether each stage after the first waits for `drover rollout approve`.
    pub approve_each_stage: bool,
    /// How long a pinned host has to report healthy on the target before it counts as failed.
    pub host_deadline: Duration,
}

/// A rollout spec as typed on the command line, before validation.
#[derive(Clone, Copy, Debug)]
pub struct SpecText<'a> {
    /// `APP`.
    pub app: &'a str,
    /// `VERSION`.
    pub target: &'a str,
    /// `--stages` (or `--groups`, which is the same list without percentages).
    pub stages: &'a str,
    /// `--max-in-flight`.
    pub max_in_flight: &'a str,
    /// `--bake`.
    pub bake: &'a str,
    /// `--max-failures`.
    pub max_failures: &'a str,
    /// `--on-failure`.
    pub on_failure: &'a str,
    /// `--approve-each-stage`.
    pub approve_each_stage: bool,
    /// `--host-deadline`.
    pub host_deadline: &'a str,
}

impl RolloutSpec {
    /// Parses and validates every field, reporting every bad one at once (STYLE.md).
    pub fn parse(text: &SpecText<'_>) -> Result<RolloutSpec, SpecErrors> {
        let mut errors = Vec::new();
        let app = keep(
            &mut errors,
            text.app.parse::<AppName>().map_err(name_error("app", text.app)),
        );
        let target = keep(
            &mut errors,
            text.target
                .parse::<Version>()
                .map_err(name_error("version", text.target)),
        );
        let stages = keep(&mut errors, text.stages.parse::<Stages>());
        let max_in_flight = keep(
            &mut errors,
            Limit::parse("max-in-flight", text.max_in_flight).and_then(|limit| {
                if limit.ceil_of(1) == 0 {
                    Err(SpecError::new(
                        "max-in-flight",
                        text.max_in_flight,
                        "at least 1 host or 1%",
                    ))
                } else {
                    Ok(limit)
                }
            }),
        );
        let bake = keep(
            &mut errors,
            text.bake.parse::<Duration>().map_err(name_error("bake", text.bake)),
        );
        let max_failures = keep(&mut errors, Limit::parse("max-failures", text.max_failures));
        let on_failure = keep(&mut errors, text.on_failure.parse::<OnFailure>());
        let host_deadline = keep(
            &mut errors,
            text.host_deadline
                .parse::<Duration>()
                .map_err(name_error("host-deadline", text.host_deadline))
                .and_then(|deadline| {
                    if deadline.as_millis() < 1000 {
                        Err(SpecError::new("host-deadline", text.host_deadline, "at least 1s"))
                    } else {
                        Ok(deadline)
                    }
                }),
        );
        match (
            app,
            target,
            stages,
            max_in_flight,
            bake,
            max_failures,
            on_failure,
            host_deadline,
        ) {
            (
                Some(app),
                Some(target),
                Some(stages),
                Some(max_in_flight),
                Some(bake),
                Some(max_failures),
                Some(on_failure),
                Some(host_deadline),
            ) => Ok(RolloutSpec {
                app,
                target,
                stages,
                max_in_flight,
                bake,
                max_failures,
                on_failure,
                approve_each_stage: text.approve_each_stage,
                host_deadline,
            }),
            _ => Err(SpecErrors(errors)),
        }
    }
}

/// Maps a name or duration error of the protocol to the field it was given for.
fn name_error<'a>(field: &'static str, value: &'a str) -> impl FnOnce(drover_protocol::NameError) -> SpecError + 'a {
    move |error| SpecError::new(field, value, error.expected)
}

/// The value of `result`, or `None` with its error added to `errors`.
fn keep<T>(errors: &mut Vec<SpecError>, result: Result<T, SpecError>) -> Option<T> {
    result.map_err(|error| errors.push(error)).ok()
}

/// One bad field of a rollout spec.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("invalid --{field} {value:?}: expected {expected}")]
pub struct SpecError {
    /// The option, as the CLI spells it without dashes.
    pub field: &'static str,
    /// The refused text (at most 80 characters).
    pub value: String,
    /// What a valid value looks like.
    pub expected: String,
}

impl SpecError {
    fn new(field: &'static str, value: &str, expected: &str) -> SpecError {
        SpecError {
            field,
            value: value.chars().take(80).collect(),
            expected: expected.to_owned(),
        }
    }
}

/// Every bad field of a rollout spec.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("rollout spec: {}", self.0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct SpecErrors(pub Vec<SpecError>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_parse_and_refuse_with_reasons() {
        assert_eq!(
            "canary,10%,50%,100%".parse::<Stages>().expect("stages").as_slice(),
            [
                StageSpec::Canary,
                StageSpec::Percent(10),
                StageSpec::Percent(50),
                StageSpec::Percent(100)
            ]
        );
        assert_eq!(
            "canary, a ,b".parse::<Stages>().expect("groups").to_string(),
            "canary,a,b"
        );
        for (bad, reason) in [
            ("", "without empty items"),
            ("10%,canary,100%", "canary only as the first stage"),
            ("50%,10%,100%", "increasing"),
            ("10%,50%", "ending with 100%"),
            ("0%,100%", "1% to 100%"),
            ("101%", "1% to 100%"),
            ("a,10%,100%", "not both"),
            ("a,a", "each group once"),
            ("Web", "group names"),
            ("canary,,100%", "without empty items"),
        ] {
            let error = bad.parse::<Stages>().expect_err(bad);
            assert!(error.to_string().contains(reason), "{bad}: {error}");
        }
    }

    #[test]
    fn limits_parse_and_round_the_safe_way() {
        assert_eq!("5".parse::<u32>().map(Limit::Count), Ok(Limit::Count(5)));
        assert_eq!(Limit::parse("f", "10%"), Ok(Limit::Percent(10)));
        assert_eq!(Limit::parse("f", "7"), Ok(Limit::Count(7)));
        for bad in ["", "%", "101%", "-1", "+3", "x", "1.5%"] {
            assert!(Limit::parse("f", bad).is_err(), "{bad}");
        }
        // In flight rounds up (progress), the failure budget rounds down (safety).
        assert_eq!(Limit::Percent(10).ceil_of(15), 2);
        assert_eq!(Limit::Percent(5).floor_of(30), 1);
        assert_eq!(Limit::Percent(5).floor_of(10), 0);
    }

    #[test]
    fn spec_parse_reports_every_bad_field_at_once() {
        let errors = RolloutSpec::parse(&SpecText {
            app: "Web",
            target: "2.0",
            stages: "canary,50%",
            max_in_flight: "0",
            bake: "soon",
            max_failures: "5",
            on_failure: "explode",
            approve_each_stage: false,
            host_deadline: "0s",
        })
        .expect_err("bad spec");
        let fields: Vec<&str> = errors.0.iter().map(|error| error.field).collect();
        assert_eq!(
            fields,
            ["app", "stages", "max-in-flight", "bake", "on-failure", "host-deadline"]
        );
        assert!(errors.to_string().starts_with("rollout spec: invalid --app \"Web\""));
    }
}
