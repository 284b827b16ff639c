//! GCRA cells: the state of rate limits.
//!
//! A rate of L units per period P is a cell with an emission interval T = P / L and a
//! capacity τ = burst × T. The cell keeps one number, its theoretical arrival time (TAT): the
//! moment it would be empty of debt. A request of n units at time `now` is admitted when
//! `max(TAT, now) + n × T − now ≤ τ`, and then moves the TAT to `max(TAT, now) + n × T`.
//! All the cells of one request are checked first and updated only when every one admits it.
//! The TAT is a time in microseconds: of the Redis clock for the shared store (a Lua script,
//! [`super::RedisStore`]), of this process's monotonic clock for the in-process cells here.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// One cell of a check: a rate limit's bucket for one measure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    /// The cell's name.
    pub key: String,
    /// Microseconds the request's units move the TAT (units × emission interval, rounded up).
    pub increment_us: i64,
    /// Capacity τ in microseconds (burst × emission interval).
    pub capacity_us: i64,
}

/// The outcome of a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// The first cell that refused the request; `None` when every cell admitted it (and was
    /// updated).
    pub refused: Option<usize>,
    /// Per cell: how far its TAT is ahead of now, in microseconds, after the update (or, when
    /// refused, before it).
    pub ahead_us: Vec<i64>,
}

/// The GCRA check over the TATs of `cells` read at `now`: moves `tats` on when every cell
/// admits the request and returns the first that refuses it (then `tats` are only brought up
/// to `now`). The Lua script of the Redis store does the same.
pub fn admit(tats: &mut [i64], cells: &[Cell], now: i64) -> Option<usize> {
    for t in tats.iter_mut() {
        *t = (*t).max(now);
    }
    let refused = cells
        .iter()
        .zip(tats.iter())
        .position(|(c, &tat)| tat + c.increment_us - now > c.capacity_us);
    if refused.is_none() {
        for (t, c) in tats.iter_mut().zip(cells) {
            *t += c.increment_us;
        }
    }
    refused
}

/// Moves a TAT by `delta_us` after the fact: forward for units used beyond the reservation
/// (debt from now on, at least), back for units given back (never before now).
pub fn adjust(tat: i64, delta_us: i64, now: i64) -> i64 {
    if delta_us >= 0 {
        tat.max(now) + delta_us
    } else {
        (tat + delta_us).max(now)
    }
}

/// Cells kept in this process: the rate limits of a single replica on SQLite state.
#[derive(Debug)]
pub struct LocalRates {
    epoch: Instant,
    cells: Mutex<Cells>,
}

#[derive(Debug, Default)]
struct Cells {
    /// TATs by cell name, under a fast hasher (seeded per process from address-space
    /// randomization): a lookup is on every limited request's path.
    tats: HashMap<String, i64, foldhash::fast::RandomState>,
    /// Size at which cells whose TAT has passed (full again, nothing to remember) are dropped.
    sweep_at: usize,
}

/// The least size at which full cells are swept out.
const SWEEP_MIN: usize = 1024;

impl Default for LocalRates {
    fn default() -> Self {
        LocalRates {
            epoch: Instant::now(),
            cells: Mutex::new(Cells {
                tats: HashMap::default(),
                sweep_at: SWEEP_MIN,
            }),
        }
    }
}

impl LocalRates {
    fn now_us(&self) -> i64 {
        i64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(i64::MAX)
    }

    /// Checks and, when every cell admits the request, takes its units.
    pub fn check(&self, cells: &[Cell]) -> Checked {
        let now = self.now_us();
        let mut guard = self.cells.lock().unwrap_or_else(|e| e.into_inner());
        let state = &mut *guard;
        if state.tats.len() >= state.sweep_at {
            state.tats.retain(|_, tat| *tat > now);
            state.sweep_at = (state.tats.len() * 2).max(SWEEP_MIN);
        }
        let mut tats: Vec<i64> = cells
            .iter()
            .map(|c| state.tats.get(&c.key).copied().unwrap_or(0))
            .collect();
        let refused = admit(&mut tats, cells, now);
        if refused.is_none() {
            for (c, &tat) in cells.iter().zip(&tats) {
                match state.tats.get_mut(&c.key) {
                    Some(t) => *t = tat,
                    None => {
                        state.tats.insert(c.key.clone(), tat);
                    }
                }
            }
        }
        drop(guard);
        for t in &mut tats {
            *t -= now;
        }
        Checked {
            refused,
            ahead_us: tats,
        }
    }

    /// How far each cell's TAT is ahead of now, in microseconds (0 for a full cell).
    pub fn peek(&self, keys: &[String]) -> Vec<i64> {
        let now = self.now_us();
        let state = self.cells.lock().unwrap_or_else(|e| e.into_inner());
        keys.iter()
            .map(|k| state.tats.get(k).map_or(0, |t| (t - now).max(0)))
            .collect()
    }

    /// Corrects cells after the fact: `(cell, delta in microseconds)`.
    pub fn adjust(&self, deltas: &[(String, i64)]) {
        let now = self.now_us();
        let mut state = self.cells.lock().unwrap_or_else(|e| e.into_inner());
        for (key, delta) in deltas {
            match state.tats.get_mut(key) {
                Some(tat) => *tat = adjust(*tat, *delta, now),
                None => {
                    state.tats.insert(key.clone(), adjust(0, *delta, now));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(increment_us: i64, capacity_us: i64) -> Cell {
        Cell {
            key: "c".into(),
            increment_us,
            capacity_us,
        }
    }

    #[test]
    fn a_burst_is_admitted_at_once_and_the_rate_after_it() {
        // 10 per second (T = 100 ms), burst 3.
        let c = [cell(100_000, 300_000)];
        let mut tat = [0];
        for _ in 0..3 {
            assert_eq!(admit(&mut tat, &c, 1_000_000), None);
        }
        assert_eq!(admit(&mut tat, &c, 1_000_000), Some(0));
        assert_eq!(tat, [1_300_000], "refused: unchanged");
        // One emission interval later exactly one more fits.
        assert_eq!(admit(&mut tat, &c, 1_100_000), None);
        assert_eq!(admit(&mut tat, &c, 1_100_000), Some(0));
    }

    #[test]
    fn every_cell_must_admit_and_a_refusal_takes_nothing() {
        let cells = [cell(10, 100), cell(50, 100)];
        let mut tats = [0, 0];
        assert_eq!(admit(&mut tats, &cells, 0), None);
        assert_eq!(admit(&mut tats, &cells, 0), None);
        assert_eq!(tats, [20, 100]);
        assert_eq!(admit(&mut tats, &cells, 0), Some(1));
        assert_eq!(tats, [20, 100], "the first cell gave nothing either");
    }

    #[test]
    fn adjustments_add_debt_or_give_back_but_never_before_now() {
        assert_eq!(adjust(500, 100, 1_000), 1_100, "debt starts now");
        assert_eq!(adjust(2_000, -500, 1_000), 1_500);
        assert_eq!(adjust(1_200, -500, 1_000), 1_000);
    }

    #[test]
    fn local_cells_forget_only_full_buckets() {
        let rates = LocalRates::default();
        let c = [cell(3_600_000_000, 3_600_000_000)];
        assert_eq!(rates.check(&c).refused, None);
        assert_eq!(rates.check(&c).refused, Some(0));
        let others: Vec<(String, i64)> = (0..SWEEP_MIN).map(|i| (i.to_string(), -1)).collect();
        rates.adjust(&others);
        assert_eq!(rates.check(&c).refused, Some(0), "a sweep keeps live cells");
    }
}
