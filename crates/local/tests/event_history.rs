//! Each VM keeps a bounded event history in the embedded database: after 100,000 events the
//! store holds the newest `keep` per VM, reads return the newest in order, and a reopen with a
//! smaller bound applies it. (The cost of a read is measured by the API benchmark, not here.)

use wukong_engine::{Event, VmRef};
use wukong_local::Store;

fn notice(i: u64) -> Event {
    Event::Notice {
        message: format!("event {i}"),
        warning: false,
    }
}

#[test]
fn the_history_stays_bounded_through_100000_events() {
    // tmpfs: the test is about what is kept, not about fsync.
    let dir = tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().unwrap());
    let path = dir.path().join("state.redb");
    let (a, b) = (VmRef::new("default", "a"), VmRef::new("default", "b"));
    let keep = 500;
    {
        let store = Store::open_with(&path, keep).unwrap();
        for i in 0..100_000u64 {
            let vm = if i % 4 == 0 { &b } else { &a };
            store.append_event(vm, &notice(i), |_| {}).unwrap();
        }
        let all_a = store.events(Some(&a), 0, usize::MAX).unwrap();
        assert_eq!(all_a.len(), keep, "VM a keeps its newest {keep}");
        assert!(all_a.windows(2).all(|w| w[0].seq < w[1].seq), "in order");
        assert!(all_a.iter().all(|e| e.vm == a));
        assert_eq!(all_a.last().unwrap().event, notice(99_999));
        let all_b = store.events(Some(&b), 0, usize::MAX).unwrap();
        assert_eq!(all_b.len(), keep);
        assert_eq!(all_b.last().unwrap().event, notice(99_996));
        // The newest few, and those after a sequence number.
        let last3 = store.events(Some(&a), 0, 3).unwrap();
        assert_eq!(
            last3.iter().map(|e| e.event.clone()).collect::<Vec<_>>(),
            [notice(99_997), notice(99_998), notice(99_999)]
        );
        let since = all_a[all_a.len() - 2].seq;
        assert_eq!(store.events(Some(&a), since, 100).unwrap().len(), 1);
        let newest = store.events(None, 0, 1).unwrap();
        assert_eq!(newest[0].event, notice(99_999));
        assert_eq!(store.events(None, 0, usize::MAX).unwrap().len(), 2 * keep);
    }
    // Reopened with a smaller bound, the older events go at once.
    let store = Store::open_with(&path, 10).unwrap();
    assert_eq!(store.events(Some(&a), 0, usize::MAX).unwrap().len(), 10);
    assert_eq!(store.events(None, 0, usize::MAX).unwrap().len(), 20);
    store.append_event(&a, &notice(100_000), |_| {}).unwrap();
    let after = store.events(Some(&a), 0, usize::MAX).unwrap();
    assert_eq!(after.len(), 10);
    assert_eq!(after.last().unwrap().event, notice(100_000));
}
