//! Queue profiles (the `[[queue]]` tables of the control plane's TOML file)
//! and the compiled form the engine runs on.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::{ConfigError, InsertError, Millis};

/// Largest team the engine accepts. Matches are assembled by a bounded
/// search whose cost grows with the number of players, so absurd sizes are
/// refused at configuration time rather than degrading a running queue.
pub const MAX_TEAM_SIZE: u32 = 1000;
/// Largest number of teams per match (see [`MAX_TEAM_SIZE`]).
pub const MAX_TEAMS: u32 = 64;

/// Engine configuration: the `[[queue]]` tables of a TOML file.
///
/// Unknown top-level tables are ignored on purpose: the control plane keeps
/// its own settings in the same file.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct EngineConfig {
    /// One profile per exact queue key.
    #[serde(default, rename = "queue")]
    pub queues: Vec<QueueProfile>,
    /// How a queue key without a profile becomes teams. Not read from the
    /// TOML file: the control plane takes it from `--queue-key-rule`, so one
    /// setting cannot disagree with another.
    #[serde(skip)]
    pub key_rule: QueueKeyRule,
}

/// How a queue key without a `[[queue]]` profile becomes teams. Both rules
/// read the mode: the first `:`-separated segment after the land type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueKeyRule {
    /// matchplane's own rule, see [`default_teams_for_key`]: `NvM` is two
    /// teams of `N` and `M`, `N` one team of `N`, anything else solo.
    #[default]
    Teams,
    /// The seed design's control plane, so its clients work unchanged: `NvM`
    /// or `N` is one group of `N` players per land (`standard:2v2` → 2),
    /// anything else solo (one ticket per land). A mode of that form with a
    /// number outside `1..=`[`MAX_TEAM_SIZE`] is refused rather than read as
    /// solo: the client asked for a group size, and silently giving it
    /// another would place its players in lands of the wrong size.
    Seed,
}

impl QueueKeyRule {
    /// Team sizes for a queue key without a profile; `Ok(None)` is solo.
    ///
    /// ```
    /// use matchplane_matchmaker::QueueKeyRule;
    /// assert_eq!(QueueKeyRule::Teams.teams_for_key("standard:2v2"), Ok(Some(vec![2, 2])));
    /// assert_eq!(QueueKeyRule::Seed.teams_for_key("standard:2v2"), Ok(Some(vec![2])));
    /// assert_eq!(QueueKeyRule::Seed.teams_for_key("hero-defense:3"), Ok(Some(vec![3])));
    /// assert_eq!(QueueKeyRule::Seed.teams_for_key("standard:ranked"), Ok(None));
    /// assert!(QueueKeyRule::Seed.teams_for_key("standard:0").is_err());
    /// ```
    pub fn teams_for_key(self, key: &str) -> Result<Option<Vec<u32>>, InsertError> {
        match self {
            QueueKeyRule::Teams => Ok(default_teams_for_key(key)),
            QueueKeyRule::Seed => seed_teams_for_key(key),
        }
    }

    /// The flag value naming this rule.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueKeyRule::Teams => "teams",
            QueueKeyRule::Seed => "seed",
        }
    }
}

fn seed_teams_for_key(key: &str) -> Result<Option<Vec<u32>>, InsertError> {
    let Some((_, rest)) = key.split_once(':') else {
        return Ok(None);
    };
    let mode = rest.split(':').next().unwrap_or("");
    let is_number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let numbers: Vec<&str> = match mode.split_once('v') {
        Some((n, m)) if is_number(n) && is_number(m) => vec![n, m],
        None if is_number(mode) => vec![mode],
        _ => return Ok(None),
    };
    // Digits too many for a u32 are out of range as well.
    let in_range = |s: &str| {
        s.parse::<u32>()
            .is_ok_and(|n| (1..=MAX_TEAM_SIZE).contains(&n))
    };
    if !numbers.iter().all(|s| in_range(s)) {
        return Err(InsertError::InvalidQueueKey {
            key: key.to_owned(),
            reason: format!(
                "mode {mode:?} needs player counts in 1..={MAX_TEAM_SIZE} (queue key rule `seed`)"
            ),
        });
    }
    Ok(numbers
        .first()
        .and_then(|n| n.parse::<u32>().ok())
        .map(|n| vec![n]))
}

impl EngineConfig {
    /// Parses the `[[queue]]` tables of a TOML document and validates them.
    pub fn from_toml_str(s: &str) -> Result<Self, ConfigError> {
        let config: EngineConfig =
            toml::from_str(s).map_err(|e| ConfigError::Parse(e.to_string()))?;
        for profile in &config.queues {
            Spec::from_profile(profile)?;
        }
        let mut seen = BTreeSet::new();
        for profile in &config.queues {
            if !seen.insert(profile.key.as_str()) {
                return Err(ConfigError::DuplicateKey(profile.key.clone()));
            }
        }
        Ok(config)
    }
}

/// One queue profile, selected by exact queue key.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QueueProfile {
    /// Exact queue key this profile applies to.
    pub key: String,
    /// Land type to provision; defaults to the key's part before the first `:`.
    #[serde(default)]
    pub land_type: Option<String>,
    /// Number of teams per match.
    #[serde(default = "default_teams")]
    pub teams: u32,
    /// Players per team.
    pub team_size: u32,
    /// Smallest team allowed once `relax.fill_after` has passed.
    #[serde(default)]
    pub min_team_size: Option<u32>,
    /// Skill window rules; absent means skill is ignored.
    #[serde(default)]
    pub skill: Option<SkillProfile>,
    /// Region/latency rules; absent means tickets match regardless of region.
    #[serde(default)]
    pub region: Option<RegionProfile>,
    /// Time-based relaxation of team filling.
    #[serde(default)]
    pub relax: RelaxProfile,
    /// String-arg and tag equality filters.
    #[serde(default)]
    pub filters: FilterProfile,
    /// Whether running lands may be backfilled from this queue.
    #[serde(default)]
    pub backfill: BackfillProfile,
}

fn default_teams() -> u32 {
    2
}

/// `[queue.skill]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SkillProfile {
    /// Numeric ticket attribute holding the skill (for a party: the party value).
    #[serde(default = "default_skill_attribute")]
    pub attribute: String,
    /// Largest skill spread (max - min) inside a match at wait 0.
    pub window: f64,
    /// Growth of the window per second of the oldest ticket's wait.
    #[serde(default)]
    pub widen_per_second: f64,
    /// Cap of the widened window; unbounded when absent.
    #[serde(default)]
    pub max_window: Option<f64>,
}

fn default_skill_attribute() -> String {
    "skill".to_owned()
}

/// `[queue.region]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegionProfile {
    /// A ticket only matches in regions where its latency is at most this.
    pub max_latency_ms: u32,
    /// After this wait ("20s"), any region the ticket reported is allowed.
    #[serde(default)]
    pub relax_after: Option<String>,
}

/// `[queue.relax]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RelaxProfile {
    /// After this wait ("30s") of a match's oldest ticket, teams of
    /// `min_team_size..team_size` players are allowed.
    #[serde(default)]
    pub fill_after: Option<String>,
}

/// `[queue.filters]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FilterProfile {
    /// Tickets only match tickets with equal values for these string args
    /// (a missing arg only equals a missing arg).
    #[serde(default)]
    pub string_args: Vec<String>,
    /// Tickets only match tickets that agree on the presence of each of these tags.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// `[queue.backfill]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackfillProfile {
    /// Allow [`crate::Engine::backfill`] on this queue.
    #[serde(default)]
    pub enabled: bool,
}

/// Compiled rules of one queue: a profile, or the default semantics of a key.
#[derive(Clone, Debug)]
pub(crate) struct Spec {
    /// `None` is solo: every ticket is a one-team match on its own.
    pub(crate) team_caps: Option<Vec<u32>>,
    /// Smallest uniform team size allowed after `fill_after`.
    pub(crate) min_team_size: u32,
    pub(crate) fill_after: Option<Millis>,
    pub(crate) skill: Option<SkillSpec>,
    pub(crate) region: Option<RegionSpec>,
    pub(crate) filter_args: Vec<String>,
    pub(crate) filter_tags: Vec<String>,
    pub(crate) backfill: bool,
}

#[derive(Clone, Debug)]
pub(crate) struct SkillSpec {
    pub(crate) attribute: String,
    pub(crate) window: f64,
    pub(crate) widen_per_second: f64,
    pub(crate) max_window: f64,
    /// Width of the skill buckets of the pool index.
    pub(crate) bucket_width: f64,
}

#[derive(Clone, Debug)]
pub(crate) struct RegionSpec {
    pub(crate) max_latency_ms: u32,
    pub(crate) relax_after: Option<Millis>,
}

impl SkillSpec {
    /// Largest skill spread allowed for a match whose oldest ticket waited
    /// `wait`. The window grows in steps, once per full second waited, so a
    /// failed anchor can be skipped until its next step (see `Memo`).
    pub(crate) fn window_at(&self, wait: Millis) -> f64 {
        let widened = self.window + self.widen_per_second * (wait / 1000) as f64;
        widened.min(self.max_window)
    }

    pub(crate) fn bucket(&self, skill: f64) -> i64 {
        // `as` saturates, which keeps absurd skills in the edge buckets
        // instead of wrapping.
        (skill / self.bucket_width).floor() as i64
    }
}

fn parse_duration(key: &str, field: &str, value: &str) -> Result<Millis, ConfigError> {
    let d = humantime::parse_duration(value).map_err(|e| ConfigError::Invalid {
        key: key.to_owned(),
        reason: format!("{field} = {value:?}: {e}"),
    })?;
    Ok(Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX))
}

impl Spec {
    pub(crate) fn from_profile(p: &QueueProfile) -> Result<Spec, ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid {
            key: p.key.clone(),
            reason,
        };
        if p.key.is_empty() {
            return Err(invalid("key must not be empty".into()));
        }
        if p.teams == 0 || p.teams > MAX_TEAMS {
            return Err(invalid(format!("teams must be in 1..={MAX_TEAMS}")));
        }
        if p.team_size == 0 || p.team_size > MAX_TEAM_SIZE {
            return Err(invalid(format!("team_size must be in 1..={MAX_TEAM_SIZE}")));
        }
        let fill_after = p
            .relax
            .fill_after
            .as_deref()
            .map(|v| parse_duration(&p.key, "relax.fill_after", v))
            .transpose()?;
        let min_team_size = match p.min_team_size {
            None => p.team_size,
            Some(m) if m == 0 || m > p.team_size => {
                return Err(invalid("min_team_size must be in 1..=team_size".into()));
            }
            Some(m) if m < p.team_size && fill_after.is_none() => {
                return Err(invalid(
                    "min_team_size below team_size needs relax.fill_after".into(),
                ));
            }
            Some(m) => m,
        };
        let skill = match &p.skill {
            None => None,
            Some(s) => {
                let max_window = s.max_window.unwrap_or(f64::INFINITY);
                if !s.window.is_finite() || s.window < 0.0 {
                    return Err(invalid("skill.window must be a finite number >= 0".into()));
                }
                if !s.widen_per_second.is_finite() || s.widen_per_second < 0.0 {
                    return Err(invalid(
                        "skill.widen_per_second must be a finite number >= 0".into(),
                    ));
                }
                if max_window.is_nan() || max_window < s.window {
                    return Err(invalid("skill.max_window must be >= skill.window".into()));
                }
                if s.attribute.is_empty() {
                    return Err(invalid("skill.attribute must not be empty".into()));
                }
                // Buckets as wide as the base window keep a candidate range
                // to a handful of buckets at wait 0, which is when most
                // matches form.
                let bucket_width = if s.window > 0.0 {
                    s.window
                } else if max_window.is_finite() && max_window > 0.0 {
                    max_window / 8.0
                } else {
                    1.0
                };
                Some(SkillSpec {
                    attribute: s.attribute.clone(),
                    window: s.window,
                    widen_per_second: s.widen_per_second,
                    max_window,
                    bucket_width,
                })
            }
        };
        let region = p
            .region
            .as_ref()
            .map(|r| -> Result<RegionSpec, ConfigError> {
                Ok(RegionSpec {
                    max_latency_ms: r.max_latency_ms,
                    relax_after: r
                        .relax_after
                        .as_deref()
                        .map(|v| parse_duration(&p.key, "region.relax_after", v))
                        .transpose()?,
                })
            })
            .transpose()?;
        let mut filter_args = p.filters.string_args.clone();
        filter_args.sort();
        filter_args.dedup();
        let mut filter_tags = p.filters.tags.clone();
        filter_tags.sort();
        filter_tags.dedup();
        if filter_tags.len() > 64 {
            return Err(invalid("at most 64 filters.tags".into()));
        }
        Ok(Spec {
            team_caps: Some(vec![p.team_size; p.teams as usize]),
            min_team_size,
            fill_after,
            skill,
            region,
            filter_args,
            filter_tags,
            backfill: p.backfill.enabled,
        })
    }

    /// The default semantics of a key without a profile, with the team sizes
    /// its [`QueueKeyRule`] derived (`None`: solo).
    pub(crate) fn default_for_teams(team_caps: Option<Vec<u32>>) -> Spec {
        let min_team_size = team_caps
            .as_ref()
            .and_then(|caps| caps.iter().copied().max())
            .unwrap_or(1);
        Spec {
            team_caps,
            min_team_size,
            fill_after: None,
            skill: None,
            region: None,
            filter_args: Vec::new(),
            filter_tags: Vec::new(),
            backfill: false,
        }
    }

    /// Largest party this queue can ever place.
    pub(crate) fn max_party(&self) -> Option<u32> {
        self.team_caps
            .as_ref()
            .map(|caps| caps.iter().copied().max().unwrap_or(0))
    }
}

/// Team sizes the default semantics derive from a queue key without a profile.
///
/// The mode is the first `:`-separated segment after the land type:
/// exactly `NvM` gives two teams of `N` and `M` players, exactly `N` gives
/// one team of `N`; anything else (including no `:` at all, `3v3-casual`,
/// zero or more than [`MAX_TEAM_SIZE`]) is solo and returns `None`.
///
/// ```
/// use matchplane_matchmaker::default_teams_for_key;
/// assert_eq!(default_teams_for_key("hero-defense:3v3"), Some(vec![3, 3]));
/// assert_eq!(default_teams_for_key("arena:1v2:eu"), Some(vec![1, 2]));
/// assert_eq!(default_teams_for_key("counter:4"), Some(vec![4]));
/// assert_eq!(default_teams_for_key("hero-defense:3v3-casual"), None);
/// assert_eq!(default_teams_for_key("hero-defense"), None);
/// ```
pub fn default_teams_for_key(key: &str) -> Option<Vec<u32>> {
    let (_, rest) = key.split_once(':')?;
    let mode = rest.split(':').next().unwrap_or("");
    let size = |s: &str| -> Option<u32> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n: u32 = s.parse().ok()?;
        (1..=MAX_TEAM_SIZE).contains(&n).then_some(n)
    };
    match mode.split_once('v') {
        Some((a, b)) => Some(vec![size(a)?, size(b)?]),
        None => Some(vec![size(mode)?]),
    }
}

/// Land type for a key without a profile `land_type`: the part before the
/// first `:`, or the whole key.
pub(crate) fn land_type_of_key(key: &str) -> &str {
    key.split_once(':').map_or(key, |(land, _)| land)
}
