//! The `BENCH` line every benchmark prints: our figure, the baseline's, their ratio.

/// Prints one `BENCH` line (`ratio` = ours / baseline).
pub(crate) fn report(name: &str, unit: &str, ours: f64, baseline: &str, baseline_value: f64) {
    println!(
        "BENCH name={name} unit={unit} ours={ours:.1} baseline={baseline} baseline_value={baseline_value:.1} ratio={:.3}",
        ours / baseline_value
    );
}
