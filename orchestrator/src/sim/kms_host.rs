//! The simulated KMS host of docs/kms.md: a test double of the school's KMS host behind the
//! simulated stations. netreset never speaks the KMS protocol; this models only what a
//! station sees in event 12289 (result, count, activated) and how the host counts.
//!
//! One pool per family (`windows` holds client and server requests; `office` its own),
//! an ordered map CMID -> last request, whose capacity grows to twice the highest
//! threshold seen and never shrinks; the oldest entry is pushed out first.

use std::collections::HashMap;
use std::time::Duration;

pub use crate::engine::COUNT_INSUFFICIENT;
/// Client and host clocks more than 4 hours apart.
pub const CLOCK_SKEW: u32 = 0xC004_F06C;

/// What asks the host: the thresholds differ, the pools do not (client and server
/// share the Windows pool).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Product {
    WindowsClient,
    WindowsServer,
    Office,
}

impl Product {
    pub fn threshold(self) -> usize {
        match self {
            Product::WindowsClient => 25,
            Product::WindowsServer | Product::Office => 5,
        }
    }

    fn pool(self) -> Pool {
        match self {
            Product::WindowsClient | Product::WindowsServer => Pool::Windows,
            Product::Office => Pool::Office,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Pool {
    Windows,
    Office,
}

/// The reply a station reads from event 12289.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    pub result: u32,
    pub count: usize,
    pub activated: bool,
}

const WINDOW: Duration = Duration::from_secs(30 * 86_400);
const MAX_SKEW: Duration = Duration::from_secs(4 * 3_600);

#[derive(Debug, Default)]
struct Table {
    /// CMID -> (last request, insertion order of that request).
    entries: HashMap<String, (Duration, u64)>,
    capacity: usize,
}

/// The host. Times are durations since an arbitrary epoch (the simulated clock).
#[derive(Debug, Default)]
pub struct KmsHost {
    tables: HashMap<Pool, Table>,
    seq: u64,
}

impl KmsHost {
    pub fn new() -> KmsHost {
        KmsHost::default()
    }

    /// An activation request from `cmid` at host time `now`, the client's clock
    /// saying `client_time`.
    pub fn request(
        &mut self,
        cmid: &str,
        product: Product,
        client_time: Duration,
        now: Duration,
    ) -> Reply {
        let skew = client_time.abs_diff(now);
        let table = self.tables.entry(product.pool()).or_default();
        if skew > MAX_SKEW {
            return Reply {
                result: CLOCK_SKEW,
                count: table.entries.len(),
                activated: false,
            };
        }
        table
            .entries
            .retain(|_, (last, _)| now.checked_sub(WINDOW).is_none_or(|edge| *last > edge));
        table.capacity = table.capacity.max(2 * product.threshold());
        self.seq += 1;
        table.entries.insert(cmid.to_owned(), (now, self.seq));
        while table.entries.len() > table.capacity {
            let oldest = table
                .entries
                .iter()
                .min_by_key(|(_, (last, seq))| (*last, *seq))
                .map(|(k, _)| k.clone())
                .expect("non-empty");
            table.entries.remove(&oldest);
        }
        let count = table.entries.len();
        let activated = count >= product.threshold();
        Reply {
            result: if activated { 0 } else { COUNT_INSUFFICIENT },
            count,
            activated,
        }
    }

    /// The count the host would show now for `product`'s pool (`slmgr /dlv` on the
    /// host), after dropping what aged out.
    pub fn current_count(&self, product: Product, now: Duration) -> usize {
        self.tables.get(&product.pool()).map_or(0, |t| {
            t.entries
                .values()
                .filter(|(last, _)| now.checked_sub(WINDOW).is_none_or(|edge| *last > edge))
                .count()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn days(d: u64) -> Duration {
        Duration::from_secs(d * 86_400)
    }

    fn ask(host: &mut KmsHost, cmid: &str, p: Product, now: Duration) -> Reply {
        host.request(cmid, p, now, now)
    }

    #[test]
    fn the_25th_distinct_client_activates_at_once_and_the_24th_never() {
        let mut host = KmsHost::new();
        for i in 0..24 {
            let r = ask(&mut host, &format!("c{i}"), Product::WindowsClient, days(1));
            assert_eq!(
                (r.count, r.activated, r.result),
                (i + 1, false, COUNT_INSUFFICIENT)
            );
        }
        for _ in 0..10 {
            let r = ask(&mut host, "c3", Product::WindowsClient, days(1));
            assert_eq!((r.count, r.activated), (24, false), "repeats do not count");
        }
        let r = ask(&mut host, "c24", Product::WindowsClient, days(1));
        assert_eq!((r.count, r.activated, r.result), (25, true, 0));
    }

    #[test]
    fn thirty_days_of_silence_empty_the_count_and_the_boundary_is_exact() {
        let mut host = KmsHost::new();
        for i in 0..25 {
            ask(
                &mut host,
                &format!("c{i}"),
                Product::WindowsClient,
                days(10),
            );
        }
        // At exactly 30 days the entries are gone (last <= now - 30 days); a moment
        // before, they are there.
        let just_before = days(40) - Duration::from_secs(1);
        assert_eq!(host.current_count(Product::WindowsClient, just_before), 25);
        assert_eq!(host.current_count(Product::WindowsClient, days(40)), 0);
        let r = ask(&mut host, "new", Product::WindowsClient, days(41));
        assert_eq!(
            (r.count, r.activated),
            (1, false),
            "after a holiday, a top-up is needed"
        );
    }

    #[test]
    fn the_table_holds_twice_the_highest_threshold_and_pushes_out_the_oldest() {
        let mut host = KmsHost::new();
        for i in 0..55 {
            ask(
                &mut host,
                &format!("c{i}"),
                Product::WindowsClient,
                days(1) + Duration::from_secs(i),
            );
        }
        assert_eq!(
            host.current_count(Product::WindowsClient, days(1) + Duration::from_secs(60)),
            50
        );
        // c0..c4 went first: asking again, c0 comes back in and pushes out c5.
        let r = ask(&mut host, "c0", Product::WindowsClient, days(2));
        assert_eq!(r.count, 50);
    }

    #[test]
    fn servers_activate_at_5_and_count_toward_the_client_25() {
        let mut host = KmsHost::new();
        for i in 0..4 {
            assert!(!ask(&mut host, &format!("s{i}"), Product::WindowsServer, days(1)).activated);
        }
        assert!(ask(&mut host, "s4", Product::WindowsServer, days(1)).activated);
        for i in 0..19 {
            assert!(!ask(&mut host, &format!("c{i}"), Product::WindowsClient, days(1)).activated);
        }
        let r = ask(&mut host, "c19", Product::WindowsClient, days(1));
        assert_eq!((r.count, r.activated), (25, true));
    }

    #[test]
    fn windows_requests_never_raise_the_office_count() {
        let mut host = KmsHost::new();
        for i in 0..30 {
            ask(&mut host, &format!("w{i}"), Product::WindowsClient, days(1));
        }
        for i in 0..4 {
            let r = ask(&mut host, &format!("o{i}"), Product::Office, days(1));
            assert_eq!((r.count, r.activated), (i + 1, false));
        }
        assert_eq!(host.current_count(Product::WindowsClient, days(1)), 30);
    }

    #[test]
    fn a_clock_four_hours_off_is_fine_and_one_second_more_is_refused() {
        let mut host = KmsHost::new();
        let now = days(3);
        let four = Duration::from_secs(4 * 3600);
        let r = host.request("a", Product::Office, now + four, now);
        assert_ne!(r.result, CLOCK_SKEW);
        let r = host.request(
            "b",
            Product::Office,
            now - four - Duration::from_secs(1),
            now,
        );
        assert_eq!((r.result, r.count), (CLOCK_SKEW, 1), "nothing changes");
    }
}
