//! Availability: no request keeps Redis busy for long, whatever its size
//! or the number of streams.

mod common;

use common::*;

/// Redis' own time per FCALL since the last CONFIG RESETSTAT, in µs, and
/// the number of calls (INFO commandstats).
fn fcall_stats(s: &Servers) -> (f64, u64) {
    let info = s.redis_cli(&["INFO", "commandstats"]);
    let line = info
        .lines()
        .find(|l| l.starts_with("cmdstat_fcall:"))
        .unwrap_or_else(|| panic!("no FCALL in {info}"));
    let field = |k: &str| -> f64 {
        line.split([':', ','])
            .find_map(|f| f.strip_prefix(&format!("{k}=")))
            .unwrap()
            .parse()
            .unwrap()
    };
    (field("usec_per_call"), field("calls") as u64)
}

/// `list` at 50,000 streams: the functions look at one page of the index
/// per call (about 200 names), so each call costs Redis about the same as
/// at a few streams (≤ 10 ms, measured as Redis' own time per call), and
/// the library pages through all of them: every name once.
#[test]
fn list_at_50000_streams_costs_redis_little_per_call() {
    let s = Servers::start();
    let c = s.client();
    c.start("real", "pw", "code").unwrap();
    // 50,000 records as the functions write them, made at once in Redis.
    let made = s.redis_cli(&[
        "EVAL",
        "for i = 1, 50000 do \
           local name = 'bulk-' .. i \
           redis.call('HSET', 'stream:' .. name, 'name', name, 'seq', 1, 'updated_ms', 1, \
             'channel', redis.sha1hex(name)) \
           redis.call('SADD', 'streams', name) \
         end return 1",
        "0",
    ]);
    assert_eq!(made.trim(), "1");
    s.redis_cli(&["CONFIG", "RESETSTAT"]);
    let listed = c.list().unwrap();
    assert_eq!(listed.len(), 50_001);
    let mut names: Vec<&str> = listed.iter().map(|i| i.name.as_str()).collect();
    names.dedup();
    assert_eq!(names.len(), 50_001, "each name once");
    let (usec, calls) = fcall_stats(&s);
    assert!(calls >= 100, "paged: {calls} calls");
    assert!(
        usec <= 10_000.0,
        "Redis spent {usec} µs per ms_list call on average"
    );
}
