//! Workloads shared by the benches.
#![allow(dead_code)]

use matchplane_matchmaker::{Engine, EngineConfig, Millis, Ticket, TicketId};

pub const RANKED_5V5: &str = r#"
[[queue]]
key = "moba:5v5-ranked"
teams = 2
team_size = 5
[queue.skill]
window = 100
widen_per_second = 25
max_window = 800
[queue.region]
max_latency_ms = 80
relax_after = "20s"
[queue.backfill]
enabled = true
"#;

pub const NOW: Millis = 1_700_000_000_000;

const REGIONS: [&str; 4] = ["eu", "us-east", "us-west", "asia"];

/// xorshift64*: deterministic and dependency-free.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

pub fn fifo_ticket(i: u64) -> Ticket {
    Ticket {
        id: TicketId(i),
        size: 1,
        enqueued_at: NOW + i,
        ..Ticket::default()
    }
}

/// A 5v5 ranked ticket: party of 1-5 (mostly solo), skill roughly normal
/// around 1500, a home region under 80 ms and three farther ones, up to a
/// minute of wait.
pub fn ranked_ticket(rng: &mut Rng, i: u64) -> Ticket {
    let size = match rng.below(100) {
        0..=54 => 1,
        55..=74 => 2,
        75..=86 => 3,
        87..=95 => 4,
        _ => 5,
    };
    let skill = (0..4).map(|_| rng.below(750) as f64).sum::<f64>();
    let home = rng.below(REGIONS.len() as u64) as usize;
    let mut t = Ticket {
        id: TicketId(i),
        size,
        enqueued_at: NOW - rng.below(60_000),
        ..Ticket::default()
    };
    t.attributes.insert("skill".to_owned(), skill);
    for (r, name) in REGIONS.iter().enumerate() {
        let ms = if r == home {
            10 + rng.below(60)
        } else {
            60 + rng.below(200)
        };
        t.latencies.insert((*name).to_owned(), ms as u32);
    }
    t
}

pub fn ranked_engine() -> Engine {
    Engine::new(EngineConfig::from_toml_str(RANKED_5V5).unwrap_or_default()).unwrap_or_else(|e| {
        panic!("bench config: {e}");
    })
}

pub fn ranked_pool(n: u64, seed: u64) -> Engine {
    let mut rng = Rng::new(seed);
    let mut engine = ranked_engine();
    for i in 0..n {
        let _ = engine.insert("moba:5v5-ranked", ranked_ticket(&mut rng, i));
    }
    engine
}

/// Resident set size of this process, from /proc (Linux only).
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
