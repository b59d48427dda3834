//! "Did you mean" suggestions for unknown keys, values, `needs` and expression words.
//!
//! "Close" = at most a third of the word's length (at least 1) apart, ignoring case, by the
//! optimal string alignment distance (Levenshtein plus transpositions of adjacent characters,
//! the Damerau-Levenshtein variant most spell checkers use). The distance is computed with a
//! cut-off, so comparing a word with thousands of stage names stays cheap; and a file gets at
//! most [`MAX_SUGGESTIONS`] lookups ([`Suggester`]), so that thousands of unknown `needs` do
//! not make validation quadratic.

use crate::limits::MAX_SUGGESTIONS;

/// The per-file suggestion budget and the buffers its lookups reuse.
pub(crate) struct Suggester {
    remaining: usize,
    scratch: Scratch,
}

impl Default for Suggester {
    fn default() -> Self {
        Suggester {
            remaining: MAX_SUGGESTIONS,
            scratch: Scratch::default(),
        }
    }
}

impl Suggester {
    /// [`did_you_mean`] while the file's budget lasts, then `""`.
    pub fn did_you_mean<'a>(
        &mut self,
        word: &str,
        candidates: impl IntoIterator<Item = &'a str>,
    ) -> String {
        if self.remaining == 0 {
            return String::new();
        }
        self.remaining -= 1;
        hint(closest(word, candidates, &mut self.scratch))
    }
}

/// `"; did you mean `x`?"` for the closest candidate (the first of equally close ones), or
/// `""` when none is close. Unbudgeted: for the expression parser's short fixed word lists.
pub(crate) fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> String {
    hint(closest(word, candidates, &mut Scratch::default()))
}

fn hint(best: Option<&str>) -> String {
    match best {
        Some(c) => format!("; did you mean `{c}`?"),
        None => String::new(),
    }
}

#[derive(Default)]
struct Scratch {
    word: Vec<char>,
    candidate: Vec<char>,
    /// ASCII words are compared byte by byte: a quarter of the memory traffic of `char`s.
    word_ascii: Vec<u8>,
    candidate_ascii: Vec<u8>,
    /// How often each (lowercased) byte occurs in an ASCII word: see [`bag_distance`].
    word_bag: Bag,
    rows: [Vec<usize>; 3],
}

/// Occurrences of each ASCII byte.
struct Bag([i32; 128]);

impl Default for Bag {
    fn default() -> Self {
        Bag([0; 128])
    }
}

impl Bag {
    fn fill(&mut self, word: &[u8]) {
        self.0 = [0; 128];
        for &b in word {
            self.0[usize::from(b & 0x7f)] += 1;
        }
    }
}

/// The bag distance between the word whose [`Bag`] is `bag` (of `word_len` bytes) and the
/// lowercased ASCII `candidate`: the larger of the two counts of bytes that the other word
/// lacks. No edit changes it by more than one (a transposition not at all), so it is a lower
/// bound of the alignment distance that costs one pass over the candidate: most candidates
/// of a long list (thousands of stage names) are ruled out by it before the quadratic
/// distance runs.
fn bag_distance(bag: &mut Bag, word_len: usize, candidate: &str) -> usize {
    let mut common = 0usize;
    for b in candidate.bytes() {
        let n = &mut bag.0[usize::from(b.to_ascii_lowercase() & 0x7f)];
        if *n > 0 {
            common += 1;
        }
        // Below zero when the candidate has more of the byte; restored below.
        *n -= 1;
    }
    for b in candidate.bytes() {
        let n = &mut bag.0[usize::from(b.to_ascii_lowercase() & 0x7f)];
        *n += 1;
    }
    (word_len - common).max(candidate.len() - common)
}

fn closest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
    scratch: &mut Scratch,
) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1);
    let Scratch {
        word: w,
        candidate: c,
        word_ascii: wa,
        candidate_ascii: ca,
        word_bag,
        rows,
    } = scratch;
    let ascii_word = word.is_ascii();
    // The `char` form of an ASCII word is made only if a non-ASCII candidate needs it.
    let mut chars_ready = !ascii_word;
    if ascii_word {
        ascii_lowercase_into(word, wa);
        word_bag.fill(wa);
    } else {
        lowercase_into(word, w);
    }
    let mut best: Option<(usize, &'a str)> = None;
    for candidate in candidates {
        if best.is_some_and(|(d, _)| d == 0) {
            break;
        }
        // Only strictly closer candidates can replace the best so far.
        let bound = best.map_or(limit, |(d, _)| d.saturating_sub(1));
        let d = if ascii_word && candidate.is_ascii() {
            if bag_distance(word_bag, wa.len(), candidate) > bound {
                continue;
            }
            ascii_lowercase_into(candidate, ca);
            bounded_distance(wa, ca, bound, rows)
        } else {
            if !chars_ready {
                lowercase_into(word, w);
                chars_ready = true;
            }
            lowercase_into(candidate, c);
            bounded_distance(w, c, bound, rows)
        };
        if let Some(d) = d {
            best = Some((d, candidate));
        }
    }
    best.map(|(_, c)| c)
}

fn ascii_lowercase_into(s: &str, out: &mut Vec<u8>) {
    out.clear();
    out.extend(s.bytes().map(|b| b.to_ascii_lowercase()));
}

fn lowercase_into(s: &str, out: &mut Vec<char>) {
    out.clear();
    out.extend(s.chars().flat_map(char::to_lowercase));
}

/// The optimal string alignment distance between `a` and `b` when it is at most `limit`.
fn bounded_distance<T: Copy + Eq>(
    a: &[T],
    b: &[T],
    limit: usize,
    rows: &mut [Vec<usize>; 3],
) -> Option<usize> {
    // Every edit changes the length by at most one.
    if a.len().abs_diff(b.len()) > limit {
        return None;
    }
    let [before, prev, cur] = rows;
    for row in [&mut *before, &mut *prev, &mut *cur] {
        row.clear();
        row.resize(b.len() + 1, 0);
    }
    for (j, cell) in prev.iter_mut().enumerate() {
        *cell = j;
    }
    let mut prev_min = 0;
    for i in 1..=a.len() {
        cur[0] = i;
        let mut row_min = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (prev[j - 1] + cost).min(prev[j] + 1).min(cur[j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(before[j - 2] + 1);
            }
            cur[j] = d;
            row_min = row_min.min(d);
        }
        // A transposition reaches back two rows, so no path to the end avoids both of the
        // last two rows: when both are over the limit, so is the distance.
        if row_min > limit && prev_min > limit {
            return None;
        }
        prev_min = row_min;
        std::mem::swap(before, prev);
        std::mem::swap(prev, cur);
    }
    let d = prev[b.len()];
    (d <= limit).then_some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn distance(a: &str, b: &str) -> Option<usize> {
        let a: Vec<char> = a.chars().collect();
        let b: Vec<char> = b.chars().collect();
        bounded_distance(&a, &b, usize::MAX / 2, &mut Default::default())
    }

    #[test]
    fn distances() {
        assert_eq!(distance("", ""), Some(0));
        assert_eq!(distance("abc", ""), Some(3));
        assert_eq!(distance("", "ab"), Some(2));
        assert_eq!(distance("kitten", "sitting"), Some(3));
        assert_eq!(distance("nedds", "needs"), Some(1));
        assert_eq!(distance("lnit", "lint"), Some(1));
        assert_eq!(distance("ab", "ba"), Some(1));
        // Optimal string alignment, not unrestricted Damerau-Levenshtein (which says 2).
        assert_eq!(distance("ca", "abc"), Some(3));
    }

    #[test]
    fn the_cut_off_never_changes_an_answer_within_the_limit() {
        let words = [
            "",
            "a",
            "ab",
            "ba",
            "abc",
            "acb",
            "bca",
            "lint",
            "lnit",
            "test",
            "tset",
            "deploy",
            "dpeloy",
            "needs",
            "nedds",
            "runs-on",
            "runson",
            "image",
            "imgae",
            "stage-0042",
        ];
        for a in words {
            for b in words {
                let full = distance(a, b).unwrap();
                let (ac, bc): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
                for limit in 0..8 {
                    let cut = bounded_distance(&ac, &bc, limit, &mut Default::default());
                    assert_eq!(cut, (full <= limit).then_some(full), "{a} {b} {limit}");
                }
            }
        }
    }

    /// The bag distance is a lower bound of the distance, so ruling candidates out by it
    /// never changes a suggestion.
    #[test]
    fn the_bag_distance_never_exceeds_the_distance() {
        let words = [
            "",
            "a",
            "ab",
            "ba",
            "abc",
            "acb",
            "bca",
            "aab",
            "lint",
            "LNIT",
            "test",
            "tset",
            "deploy",
            "dpeloy",
            "needs",
            "nedds",
            "runs-on",
            "runson",
            "stage-0042",
            "missing-0042",
            "Stage-0024",
        ];
        let mut bag = Bag::default();
        for a in words {
            let lower = a.to_ascii_lowercase();
            bag.fill(lower.as_bytes());
            for b in words {
                let full = distance(&lower, &b.to_ascii_lowercase()).unwrap();
                let lower_bound = bag_distance(&mut bag, lower.len(), b);
                assert!(lower_bound <= full, "{a} {b}: {lower_bound} > {full}");
            }
            let mut again = Bag::default();
            again.fill(lower.as_bytes());
            assert_eq!(bag.0, again.0, "{a}: the bag is restored");
        }
    }

    #[test]
    fn suggestions() {
        let keys = ["needs", "runs-on", "image", "steps"];
        assert_eq!(did_you_mean("nedds", keys), "; did you mean `needs`?");
        assert_eq!(did_you_mean("STEPS", keys), "; did you mean `steps`?");
        assert_eq!(did_you_mean("xyz", keys), "");
        // Ties: the first candidate wins.
        assert_eq!(did_you_mean("ab", ["ac", "ad"]), "; did you mean `ac`?");
        assert_eq!(did_you_mean("ab", ["ax", "ab"]), "; did you mean `ab`?");
    }

    #[test]
    fn ascii_and_unicode_words_and_candidates_mix() {
        let mut suggester = Suggester::default();
        assert_eq!(
            suggester.did_you_mean("ÉTAPE", ["etape", "étape"]),
            "; did you mean `étape`?"
        );
        // The scratch buffers of the previous lookup must not leak into this one.
        assert_eq!(
            suggester.did_you_mean("tset", ["étape", "test"]),
            "; did you mean `test`?"
        );
        assert_eq!(
            suggester.did_you_mean("etap", ["étape", "etape"]),
            "; did you mean `etape`?"
        );
    }

    #[test]
    fn a_file_gets_a_bounded_number_of_lookups() {
        let mut suggester = Suggester::default();
        for _ in 0..MAX_SUGGESTIONS {
            assert_eq!(
                suggester.did_you_mean("lnit", ["lint"]),
                "; did you mean `lint`?"
            );
        }
        assert_eq!(suggester.did_you_mean("lnit", ["lint"]), "");
    }
}
