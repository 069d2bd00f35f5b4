//! Reading process groups from /proc: how tests and the benchmark see that a step's processes are
//! really gone.

/// Live (non-zombie) processes whose process group is `pgid`.
pub fn processes_in_group(pgid: u32) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            // pid (comm) state ppid pgrp …; comm may hold spaces, so split after the last ')'.
            let fields: Vec<&str> =
                stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
            fields.get(2).and_then(|p| p.parse::<u32>().ok()) == Some(pgid) && fields.first() != Some(&"Z")
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_its_own_group() {
        let stat = std::fs::read_to_string("/proc/self/stat").expect("stat");
        let pgrp: u32 =
            stat.rsplit_once(')').expect("comm").1.split_whitespace().nth(2).expect("pgrp").parse().expect("num");
        assert!(processes_in_group(pgrp) >= 1);
        assert_eq!(processes_in_group(u32::MAX - 7), 0);
    }
}
