//! Reading the per-CPU counters and printing them.

use aya::{maps::PerCpuArray, Ebpf};
use common::{counters::Counter, maps::COUNTERS};

/// Counter totals over all CPUs, in `C::ALL` order.
pub struct Counters<C: Counter> {
    map: PerCpuArray<aya::maps::MapData, u64>,
    _kind: std::marker::PhantomData<C>,
}

impl<C: Counter> Counters<C> {
    /// Takes the program's counter map out of `ebpf`.
    pub fn take(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        let map = ebpf.take_map(COUNTERS).ok_or_else(|| anyhow::anyhow!("eBPF object has no {COUNTERS} map"))?;
        Ok(Self { map: PerCpuArray::try_from(map)?, _kind: std::marker::PhantomData })
    }

    pub fn read(&self) -> anyhow::Result<Vec<u64>> {
        C::ALL.iter().map(|c| Ok(self.map.get(&c.index(), 0)?.iter().sum())).collect()
    }
}

/// Userspace counters printed after the XDP program's.
pub type Extra = [(&'static str, u64)];

/// `label stats: a=1 b=2 x=3 | per second: a=0.5 b=1.0`: one line of `name=value` pairs that
/// tests and people can both read; rates are of the XDP counters.
pub fn stats_line<C: Counter>(label: &str, now: &[u64], before: &[u64], seconds: f64, extra: &Extra) -> String {
    let mut line = format!("{label} stats:");
    for (c, v) in C::ALL.iter().zip(now) {
        line += &format!(" {}={v}", c.name());
    }
    for (name, v) in extra {
        line += &format!(" {name}={v}");
    }
    line += " | per second:";
    for ((c, v), b) in C::ALL.iter().zip(now).zip(before) {
        line += &format!(" {}={:.1}", c.name(), v.saturating_sub(*b) as f64 / seconds.max(1e-9));
    }
    line
}

/// `label summary: a=1 b=2 x=3`: the totals at exit.
pub fn summary_line<C: Counter>(label: &str, totals: &[u64], extra: &Extra) -> String {
    let mut line = format!("{label} summary:");
    for (c, v) in C::ALL.iter().zip(totals) {
        line += &format!(" {}={v}", c.name());
    }
    for (name, v) in extra {
        line += &format!(" {name}={v}");
    }
    line
}

#[cfg(test)]
mod tests {
    use common::counters::InterceptCounter;

    use super::*;

    #[test]
    fn stats_line_has_totals_then_rates() {
        let line = stats_line::<InterceptCounter>("intercept", &[10, 4, 4, 0, 6, 0], &[0; 6], 2.0, &[("routed", 3)]);
        assert_eq!(
            line,
            "intercept stats: seen=10 matched=4 redirected=4 no_socket=0 passed=6 malformed=0 routed=3 | per second: \
             seen=5.0 matched=2.0 redirected=2.0 no_socket=0.0 passed=3.0 malformed=0.0"
        );
    }

    #[test]
    fn summary_line_has_totals() {
        assert_eq!(
            summary_line::<InterceptCounter>("intercept", &[1, 2, 3, 4, 5, 6], &[]),
            "intercept summary: seen=1 matched=2 redirected=3 no_socket=4 passed=5 malformed=6"
        );
    }
}
