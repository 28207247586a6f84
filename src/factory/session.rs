//! Agent sessions: fresh session ids, and the session a retry resumes
//! after a crash (Claude Code's `--resume`).

use crate::registry::{AgentStatus, Registry};
use crate::role::Role;

/// A fresh session id (a random UUID v4). /dev/urandom is read once per
/// process for two seeds; each id is then SplitMix64 of a seed plus a
/// counter, a bijection of the counter, so no two ids of one process are
/// equal.
pub(super) fn new_session_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static SEEDS: OnceLock<[u64; 2]> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seeds = SEEDS.get_or_init(|| {
        let mut bytes = [0u8; 16];
        if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
            use std::io::Read;
            let _ = f.read_exact(&mut bytes);
        }
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let half = |k: usize| u64::from_le_bytes(bytes[k..k + 8].try_into().expect("8 bytes"));
        [half(0) ^ clock, half(8) ^ u64::from(std::process::id())]
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // SplitMix64: the finalizer of seed + (n + 1) * golden ratio.
    let splitmix = |seed: u64| {
        crate::mix::splitmix64(
            seed.wrapping_add(n.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        )
    };
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&splitmix(seeds[0]).to_le_bytes());
    bytes[8..].copy_from_slice(&splitmix(seeds[1]).to_le_bytes());
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let h: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The session to resume: the last lost attempt of this task, when the
/// role allows resuming (claude only).
///
/// Returns the session id and the lost agent's workspace: `claude --resume`
/// finds a session only from the directory it was saved for, so the
/// resumed agent works where the lost one did.
pub(super) fn resume_session(
    reg: &Registry,
    role: &Role,
    task: &str,
) -> Option<(String, Option<String>)> {
    if !role.settings.resume || !role.settings.agent.resumes_sessions() {
        return None;
    }
    reg.agents
        .values()
        .filter(|a| a.task == task && a.status == AgentStatus::Lost)
        .max_by_key(|a| a.spawned)
        .and_then(|a| Some((a.session_id.clone()?, a.workspace.clone())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn session_ids_are_distinct_uuid_v4s() {
        let ids: std::collections::HashSet<String> =
            (0..10_000).map(|_| new_session_id()).collect();
        assert_eq!(ids.len(), 10_000);
        for id in ids.iter().take(50) {
            let parts: Vec<&str> = id.split('-').collect();
            assert_eq!(
                parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
                [8, 4, 4, 4, 12],
                "{id}"
            );
            assert!(parts[2].starts_with('4'), "version 4: {id}");
            assert!("89ab".contains(&parts[3][..1]), "variant: {id}");
            assert!(
                id.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()),
                "{id}"
            );
        }
    }
}
