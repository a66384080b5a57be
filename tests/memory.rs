//! Memory the relay holds when nobody asks it for anything. A test binary of its own: it counts
//! the bytes alive in the process through its own global allocator, which no other test shares.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use netbox_relay::telemetry;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; only the sizes are counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// The Prometheus recorder keeps every histogram sample until they are folded into buckets. A
/// relay that no Prometheus scrapes (the soak's, a quickstart's) held one sample per webhook and
/// per delta for ever: its memory grew with its traffic.
#[test]
fn histogram_samples_nobody_scrapes_are_folded_into_their_buckets() {
    telemetry::metrics_handle().expect("the recorder installs");
    // The metric's own entry and the first block of samples, before counting.
    telemetry::webhook_answered("published", Duration::from_millis(3));
    let before = live();
    let mut peak = 0;
    for i in 0..400_000 {
        telemetry::webhook_answered("published", Duration::from_millis(3));
        if i % 10_000 == 0 {
            peak = peak.max(live() - before);
        }
    }
    // Held until folded: at least half of 400,000 samples of 8 bytes (an upkeep may come
    // in the middle of the loop).
    assert!(
        peak > 1_000_000,
        "the samples were never held: {peak} bytes"
    );
    // Webhooks keep coming, a hundred a second, and nothing scrapes `/metrics`. (Folded blocks
    // are freed once the threads that record have moved on: crossbeam's epochs.)
    let deadline = Instant::now() + 3 * telemetry::UPKEEP_EVERY;
    loop {
        let held = live() - before;
        if held < 200_000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{held} bytes of histogram samples still held {:?} after the burst, with no scrape",
            3 * telemetry::UPKEEP_EVERY
        );
        telemetry::webhook_answered("published", Duration::from_millis(3));
        std::thread::sleep(Duration::from_millis(10));
    }
}
