//! Names for containers created without `--name`: `adjective_noun`, unique in the store.

const ADJECTIVES: &[&str] = &[
    "amber", "bold", "brave", "bright", "calm", "clever", "cosy", "crisp", "daring", "eager",
    "fair", "fancy", "gentle", "glad", "golden", "happy", "humble", "jolly", "keen", "kind",
    "lively", "lucky", "merry", "mellow", "nimble", "noble", "patient", "plucky", "proud", "quick",
    "quiet", "rapid", "ready", "shiny", "silent", "smart", "snappy", "steady", "sunny", "swift",
    "tidy", "trusty", "vivid", "warm", "wise", "witty", "young", "zesty",
];

const NOUNS: &[&str] = &[
    "acorn", "badger", "beacon", "birch", "canyon", "cedar", "comet", "coral", "delta", "ember",
    "falcon", "fern", "fjord", "geyser", "glacier", "harbor", "heron", "island", "juniper",
    "kestrel", "lagoon", "lantern", "maple", "meadow", "nebula", "oak", "orchid", "otter",
    "pebble", "pine", "quartz", "raven", "reef", "river", "sparrow", "spruce", "summit", "thistle",
    "tundra", "valley", "walrus", "willow", "wren", "yarrow", "zephyr",
];

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom")
        && std::io::Read::read_exact(&mut f, &mut b).is_ok()
    {
        return u64::from_le_bytes(b);
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ u64::from(std::process::id())
}

/// A name `taken` says is free.
pub(crate) fn generate(taken: impl Fn(&str) -> bool) -> String {
    for attempt in 0u32.. {
        let r = random_u64();
        let a = ADJECTIVES[(r % ADJECTIVES.len() as u64) as usize];
        let n = NOUNS[((r >> 20) % NOUNS.len() as u64) as usize];
        let name = if attempt < 20 {
            format!("{a}_{n}")
        } else {
            format!("{a}_{n}_{}", (r >> 40) % 10_000)
        };
        if !taken(&name) {
            return name;
        }
    }
    unreachable!("the loop only ends by returning")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_and_valid() {
        let n = generate(|_| false);
        assert!(crate::container::valid_name(&n), "{n}");
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let n = generate(|x| seen.contains(x));
            assert!(seen.insert(n));
        }
    }
}
