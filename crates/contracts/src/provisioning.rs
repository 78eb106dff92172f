//! Game server ↔ control plane: register / heartbeat / deregister (seed REST contract).

use serde::{Deserialize, Serialize};

/// `POST /v1/provisioning/servers/register` — also the heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegisterRequest {
    #[schema(required = true, nullable = false)]
    #[serde(default)]
    pub server_id: Option<String>,
    /// Bind address (control-plane internal use).
    #[schema(required = true, nullable = false)]
    #[serde(default)]
    pub host: Option<String>,
    #[schema(required = true, nullable = false)]
    #[serde(default)]
    pub port: Option<u16>,
    /// Seed field: the one land type this server hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub land_type: Option<String>,
    /// Additive: every land type this server hosts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub land_types: Vec<String>,
    /// Client-facing address (e.g. the load balancer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_scheme: Option<String>,
    /// Additive: a path prefix the load balancer maps to this server, e.g. `/gs/1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_path_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Capacity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<Load>,
    #[serde(default)]
    pub draining: bool,
    /// Lands currently open on the server (lets the control plane spot allocations nobody joined).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub land_ids: Option<Vec<String>>,
    /// Additive: a fresh id per game-server process. A new instance under the same
    /// `serverId` means the previous process died with its lands; match tokens carry it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Capacity {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lands: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_players: Option<u32>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Load {
    #[serde(default)]
    pub lands: u32,
    #[serde(default)]
    pub players: u32,
    /// Additive: how many ticks one state sync stands for on the server right now.
    /// Above 1 the server is overloaded and shedding sync work; the control plane
    /// then places new lands on another live server with room, if there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_stretch: Option<u32>,
}
