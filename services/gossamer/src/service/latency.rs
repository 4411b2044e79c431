//! Query latency, per kind (search, count, aggregate), kept for `/metrics` as a
//! Prometheus histogram.

use std::collections::BTreeMap;

/// Per kind: counts per bucket (the last is +Inf), the sum in seconds, the count.
pub struct Latency {
    kinds: std::sync::Mutex<BTreeMap<&'static str, (Vec<u64>, f64, u64)>>,
}

/// Upper bounds of the latency buckets, in seconds.
const LATENCY_BUCKETS: [f64; 11] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// The process's latency figures.
pub fn latency() -> &'static Latency {
    static L: std::sync::OnceLock<Latency> = std::sync::OnceLock::new();
    L.get_or_init(|| Latency { kinds: Default::default() })
}

impl Latency {
    pub fn observe(&self, kind: &'static str, seconds: f64) {
        let mut kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        let e = kinds.entry(kind).or_insert_with(|| (vec![0; LATENCY_BUCKETS.len() + 1], 0.0, 0));
        let i = LATENCY_BUCKETS.iter().position(|b| seconds <= *b).unwrap_or(LATENCY_BUCKETS.len());
        e.0[i] += 1;
        e.1 += seconds;
        e.2 += 1;
    }

    /// Appends the histogram in Prometheus text format.
    pub fn render(&self, node: &str, out: &mut String) {
        use std::fmt::Write;
        let kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(out, "# HELP gossamer_query_seconds time to answer a search, count or aggregation\n# TYPE gossamer_query_seconds histogram");
        for (kind, (buckets, sum, count)) in kinds.iter() {
            let mut acc = 0;
            for (i, n) in buckets.iter().enumerate() {
                acc += n;
                let le = LATENCY_BUCKETS.get(i).map_or("+Inf".to_string(), |b| b.to_string());
                let _ = writeln!(out, "gossamer_query_seconds_bucket{{node=\"{node}\",kind=\"{kind}\",le=\"{le}\"}} {acc}");
            }
            let _ = writeln!(out, "gossamer_query_seconds_sum{{node=\"{node}\",kind=\"{kind}\"}} {sum}");
            let _ = writeln!(out, "gossamer_query_seconds_count{{node=\"{node}\",kind=\"{kind}\"}} {count}");
        }
    }
}
