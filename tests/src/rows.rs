//! Table-driven packet tests: each file keeps its own rows and its own
//! `run_row(name)`; [`row_tests!`](crate::row_tests) makes one `#[test]` per
//! row and checks that no row is left without one.

use std::collections::HashSet;

/// Panics unless the row names are unique and are exactly the tests listed.
pub fn assert_one_test_per_row(rows: &[&str], tests: &[&str]) {
    let names: HashSet<&str> = rows.iter().copied().collect();
    assert_eq!(names.len(), rows.len(), "row names are unique");
    assert_eq!(
        names,
        tests.iter().copied().collect(),
        "every row is listed in row_tests!, and nothing else"
    );
}

/// `row_tests!(ROW_NAMES; name, ...)`: one test per listed row, named after
/// it, calling the invoking file's `run_row(name)`, and a test that
/// `ROW_NAMES` (every row's name) and the list agree.
#[macro_export]
macro_rules! row_tests {
    ($row_names:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run_row(stringify!($name));
            }
        )*

        #[test]
        fn every_row_runs_as_a_test_of_its_own() {
            $crate::rows::assert_one_test_per_row(&$row_names, &[$(stringify!($name)),*]);
        }
    };
}
