//! "Did you mean" for unknown field names and enum values.

/// The candidate closest to `word`, if it is close enough to be a plausible typo: a
/// case-insensitive match, or an edit distance of at most a third of the word (at least 1, at
/// most 3), with transpositions counting as one edit (`hsots` -> `hosts`).
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = word.to_ascii_lowercase();
    let limit = (word.chars().count() / 3).clamp(1, 3);
    let mut best: Option<(usize, &'a str)> = None;
    for cand in candidates {
        let d = if cand.to_ascii_lowercase() == lower {
            0
        } else {
            distance(word, cand)
        };
        if d <= limit && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, cand));
        }
    }
    best.map(|(_, c)| c)
}

/// Optimal string alignment distance (Levenshtein plus adjacent transpositions).
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev2 = vec![0usize; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0usize; b.len() + 1];
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                cur[j] = cur[j].min(prev2[j - 2] + 1);
            }
        }
        std::mem::swap(&mut prev2, &mut prev);
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        let fields = [
            "hosts",
            "addresses",
            "ports",
            "location",
            "resolution",
            "endpoints",
            "exportTo",
        ];
        assert_eq!(did_you_mean("hsots", fields), Some("hosts"));
        assert_eq!(did_you_mean("Hosts", fields), Some("hosts"));
        assert_eq!(did_you_mean("export_to", fields), Some("exportTo"));
        assert_eq!(did_you_mean("endpoint", fields), Some("endpoints"));
        assert_eq!(did_you_mean("xyz", fields), None);
        assert_eq!(did_you_mean("STATC", ["NONE", "STATIC", "DNS"]), Some("STATIC"));
    }
}
