//! Claims of the match token (JWT) the control plane mints per ticket member.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MatchClaims {
    pub iss: String,
    pub aud: String,
    /// The player this token admits (= `player_id`).
    pub sub: String,
    pub player_id: String,
    /// Every member of the ticket (the party).
    pub members: Vec<String>,
    pub assignment_id: String,
    pub land_id: String,
    pub land_type: String,
    pub server_id: String,
    pub iat: u64,
    pub exp: u64,
    /// = `assignment_id`.
    pub jti: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<u32>,
    /// The whole match as player ids per team, so the game server knows who to expect.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roster: Vec<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_key: Option<String>,
    /// The game-server process (`instanceId` of its registration) the land was
    /// allocated on: a restarted server refuses tokens of its previous life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_instance_id: Option<String>,
}
