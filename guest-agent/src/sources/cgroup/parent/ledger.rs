//! The arithmetic of one parent cgroup, free of I/O, so every case is a unit test: which
//! children left, how much CPU time nobody live explains, and who gets it.

use std::collections::HashMap;

use super::{Completion, Seen};

/// The arithmetic of one parent, free of I/O: the parent's and each child's usage at the last
/// sample, and what a new sample's readings say about the children that left.
#[derive(Debug, Default)]
pub struct Ledger {
    /// The parent's usage at the last sample; `None` = no usable baseline.
    pub(super) parent: Option<u64>,
    /// By child directory name: usage at the last sample and CPU time over the period before.
    pub(super) children: HashMap<String, ChildState>,
    /// The last period in which no child left showed more than [`LEAK_TOLERANCE`] unexplained.
    pub(super) leaky: bool,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct ChildState {
    last: u64,
    rate: u64,
}

/// What one [`Ledger::step`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// How the shares were obtained; `None` when nothing could be completed.
    pub completion: Option<Completion>,
    /// Per departed child (by name): its part of the unexplained time, µs.
    pub shares: Vec<(String, u64)>,
    /// Per departed child: its usage at the last sample.
    pub bases: Vec<(String, u64)>,
    /// In a period in which no child left, the unexplained time (signed, µs).
    pub quiet_unexplained: Option<i128>,
}

impl Ledger {
    /// Takes one sample: the parent's usage now and every child's state (`complete`: every
    /// child that exists is in `children`). Children absent from the last sample are new (the
    /// last sample was complete, so they were born since); [`Seen::Gone`] ones are departed.
    pub fn step(&mut self, parent: u64, children: &[(String, Seen)], complete: bool) -> Step {
        let mut step = Step::default();
        let failed = children.iter().any(|(_, s)| *s == Seen::Failed);
        let departed: Vec<(&String, ChildState)> = children
            .iter()
            .filter(|(_, s)| *s == Seen::Gone)
            .filter_map(|(n, _)| Some((n, *self.children.get(n)?)))
            .collect();
        // A live child is new (usage 0 at the last sample) when the name was unknown, or when
        // the cgroup under that name left and a new one took its place within the period.
        let last_of = |name: &String| {
            if departed.iter().any(|(n, _)| *n == name) {
                0
            } else {
                self.children.get(name).map_or(0, |c| c.last)
            }
        };
        let usable = self.parent.is_some() && !failed;
        if let (Some(before), true) = (self.parent, usable) {
            let mut unexplained = i128::from(parent) - i128::from(before);
            for (name, seen) in children {
                if let Seen::Live(now) = seen {
                    unexplained -= i128::from(*now) - i128::from(last_of(name));
                }
            }
            if departed.is_empty() {
                step.quiet_unexplained = Some(unexplained);
            } else {
                let total = u64::try_from(unexplained.max(0)).unwrap_or(u64::MAX);
                let weights: Vec<u64> = departed.iter().map(|(_, c)| c.rate).collect();
                let parts = split_exact(total, &weights);
                step.completion = Some(if self.leaky {
                    Completion::Leaky
                } else if departed.len() == 1 {
                    Completion::Exact
                } else {
                    Completion::Split {
                        among: departed.len(),
                    }
                });
                for ((name, state), part) in departed.iter().zip(parts) {
                    step.shares.push(((*name).clone(), part));
                    step.bases.push(((*name).clone(), state.last));
                }
            }
        }
        // The new baseline. A failed child's usage now is unknown: start over next sample.
        let mut next = HashMap::with_capacity(children.len());
        for (name, seen) in children {
            if let Seen::Live(now) = seen {
                let last = last_of(name);
                next.insert(
                    name.clone(),
                    ChildState {
                        last: *now,
                        rate: now.saturating_sub(last),
                    },
                );
            }
        }
        self.children = next;
        self.parent = (complete && !failed).then_some(parent);
        step
    }
}

/// Splits `total` in proportion to `weights` (equally when they are all zero), as integers
/// that sum to `total` exactly: largest remainder, ties to the lower index.
#[must_use]
pub fn split_exact(total: u64, weights: &[u64]) -> Vec<u64> {
    if weights.is_empty() {
        return Vec::new();
    }
    let sum: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    let (weights, sum): (Vec<u128>, u128) = if sum == 0 {
        (vec![1; weights.len()], weights.len() as u128)
    } else {
        (weights.iter().map(|&w| u128::from(w)).collect(), sum)
    };
    let total = u128::from(total);
    let mut parts: Vec<u128> = weights.iter().map(|w| total * w / sum).collect();
    let mut left = total - parts.iter().sum::<u128>();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse((total * weights[i]) % sum));
    for i in order {
        if left == 0 {
            break;
        }
        parts[i] += 1;
        left -= 1;
    }
    parts
        .into_iter()
        .map(|p| u64::try_from(p).expect("a part never exceeds the u64 total"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(name: &str, usage: u64) -> (String, Seen) {
        (name.to_owned(), Seen::Live(usage))
    }

    fn gone(name: &str) -> (String, Seen) {
        (name.to_owned(), Seen::Gone)
    }

    #[test]
    fn one_departed_child_gets_exactly_the_unexplained_time() {
        let mut ledger = Ledger::default();
        assert_eq!(
            ledger.step(1_000, &[live("a", 400), live("b", 600)], true),
            Step::default(),
            "the first sample only sets the baseline"
        );
        // a: +100 live; b used 250 more, then left; a new child c used 30.
        let step = ledger.step(1_380, &[live("a", 500), gone("b"), live("c", 30)], true);
        assert_eq!(step.completion, Some(Completion::Exact));
        assert_eq!(step.shares, vec![("b".to_owned(), 250)]);
        assert_eq!(step.bases, vec![("b".to_owned(), 600)]);
    }

    #[test]
    fn several_departed_children_split_by_last_rate_and_sum_exactly() {
        let mut ledger = Ledger::default();
        ledger.step(0, &[live("a", 0), live("b", 0)], true);
        ledger.step(400, &[live("a", 300), live("b", 100)], true);
        let step = ledger.step(401, &[gone("a"), gone("b")], true);
        assert_eq!(step.completion, Some(Completion::Split { among: 2 }));
        let total: u64 = step.shares.iter().map(|(_, s)| s).sum();
        assert_eq!(total, 1, "nothing invented, nothing lost");
        assert_eq!(
            step.shares,
            vec![("a".to_owned(), 1), ("b".to_owned(), 0)],
            "3:1 by last rate, remainder to the larger"
        );
    }

    #[test]
    fn skew_never_gives_negative_time_and_quiet_periods_measure_leaks() {
        let mut ledger = Ledger::default();
        ledger.step(1_000, &[live("a", 1_000)], true);
        let quiet = ledger.step(1_100, &[live("a", 1_105)], true);
        assert_eq!(quiet.quiet_unexplained, Some(-5));
        let step = ledger.step(1_100, &[gone("a")], true);
        assert_eq!(step.shares, vec![("a".to_owned(), 0)]);
    }

    #[test]
    fn a_failed_sibling_or_incomplete_listing_completes_nothing_and_rebaselines() {
        let mut ledger = Ledger::default();
        ledger.step(0, &[live("a", 0), live("b", 0)], true);
        let failed = ledger.step(100, &[gone("a"), (String::from("b"), Seen::Failed)], true);
        assert_eq!(failed.completion, None);
        ledger.step(200, &[live("b", 150)], false);
        assert_eq!(
            ledger.step(300, &[gone("b")], true).completion,
            None,
            "no baseline after an incomplete sample"
        );
    }

    #[test]
    fn split_exact_sums_and_handles_zero_weights() {
        assert_eq!(split_exact(10, &[0, 0, 0]), vec![4, 3, 3]);
        assert_eq!(split_exact(7, &[1, 1]), vec![4, 3]);
        assert_eq!(
            split_exact(u64::MAX, &[u64::MAX, 1])
                .iter()
                .map(|&p| u128::from(p))
                .sum::<u128>(),
            u128::from(u64::MAX)
        );
        assert!(split_exact(5, &[]).is_empty());
    }
}
