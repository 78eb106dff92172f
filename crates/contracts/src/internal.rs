//! Internal control-plane API used by game servers and operators, not clients.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `POST /v1/internal/backfill`: "land L on server S has open slots; fill them
/// from queue Q". The resulting assignments point at the existing land.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackfillRequest {
    #[schema(required = true, nullable = false)]
    #[serde(default)]
    pub queue_key: Option<String>,
    #[schema(required = true, nullable = false)]
    #[serde(default)]
    pub land_id: Option<String>,
    #[schema(required = true, nullable = false)]
    #[serde(default)]
    pub server_id: Option<String>,
    /// The running match, so new tokens carry the same `matchId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_id: Option<String>,
    /// Open slots per team index.
    #[serde(default)]
    pub open_slots: Vec<u32>,
    /// Players already in the land, per team; new tokens' `roster` extends it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roster: Vec<Vec<String>>,
    /// Skills of the land's current players, per team (the skill window centres on them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub team_skills: Vec<Vec<f64>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub string_args: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackfillResponse {
    pub land_id: String,
    /// Tickets now assigned to the land (empty when none fit).
    pub placed: Vec<BackfillPlaced>,
    pub quality: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackfillPlaced {
    pub ticket_id: String,
    pub members: Vec<String>,
    pub team: u32,
    pub assignment_id: String,
}
