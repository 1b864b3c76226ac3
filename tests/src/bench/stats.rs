//! Medians and ranges over repetitions, and ratios to a reference contender.

use serde::Serialize;

/// A figure over repetitions: its median, smallest and largest value.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// How many values it summarises.
    pub n: usize,
}

/// Summarises `values`; `None` when there is none (NaNs are ignored: a
/// figure that could not be computed is absent, not zero).
pub fn summarize(values: &[f64]) -> Option<Summary> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    Some(Summary {
        median: median_of_sorted(&sorted),
        min: sorted[0],
        max: sorted[sorted.len() - 1],
        n: sorted.len(),
    })
}

/// Values taken in groups (batches, rounds): the median of all of them,
/// with the smallest and largest group median as the range.
pub fn over_groups(all: &[f64], group_medians: &[f64]) -> Option<Summary> {
    let (overall, groups) = (summarize(all)?, summarize(group_medians)?);
    Some(Summary {
        median: overall.median,
        min: groups.min,
        max: groups.max,
        n: overall.n,
    })
}

/// The median of an ascending slice: the middle value, or the mean of the
/// two middle values for an even count.
pub fn median_of_sorted(sorted: &[f64]) -> f64 {
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

/// `value / reference`, or `None` when the reference is not a positive
/// number (a ratio to zero or to a negative difference says nothing).
pub fn ratio(value: f64, reference: f64) -> Option<f64> {
    (reference > 0.0 && reference.is_finite() && value.is_finite()).then(|| value / reference)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_count_takes_the_middle_value_whatever_the_input_order() {
        let s = summarize(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
    }

    #[test]
    fn even_count_averages_the_two_middle_values() {
        assert_eq!(summarize(&[4.0, 1.0, 3.0, 2.0]).unwrap().median, 2.5);
    }

    #[test]
    fn nothing_to_summarise_is_none_and_nans_are_skipped() {
        assert_eq!(summarize(&[]), None);
        assert_eq!(summarize(&[f64::NAN]), None);
        assert_eq!(summarize(&[f64::NAN, 5.0]).unwrap().median, 5.0);
    }

    #[test]
    fn ratio_needs_a_positive_reference() {
        assert_eq!(ratio(3.0, 2.0), Some(1.5));
        assert_eq!(ratio(3.0, 0.0), None);
        assert_eq!(ratio(3.0, -1.0), None);
        assert_eq!(ratio(f64::NAN, 1.0), None);
    }
}
