//! The limiter's queue, slots and shedding, tested against its own picker.

use super::*;
use crate::config::PriorityClass;

struct OneOrigin(SocketAddr);

impl Pick for OneOrigin {
    fn pick(&self, accept: &dyn Fn(SocketAddr) -> bool) -> Option<SocketAddr> {
        accept(self.0).then_some(self.0)
    }
    fn any_ready(&self) -> bool {
        true
    }
}

fn limiter(max_inflight: usize, queue_size: usize) -> (Arc<Limiter>, Arc<Classes>) {
    let config = LimitsSection {
        max_inflight,
        queue_size,
        max_wait_ms: 2000,
        default_class: "a".into(),
        classes: ["a", "b"]
            .map(|n| PriorityClass {
                name: n.into(),
                ..PriorityClass::default()
            })
            .to_vec(),
        ..LimitsSection::default()
    };
    let classes = Arc::new(Classes::new(&config).expect("classes"));
    let registry = prometheus::Registry::new();
    let metrics = Arc::new(OriginMetrics::register(&registry).expect("metrics"));
    let origin = Arc::new(OneOrigin("127.0.0.1:1".parse().expect("addr")));
    (
        Limiter::new(&config, classes.clone(), origin, metrics, None),
        classes,
    )
}

#[tokio::test]
async fn a_freed_slot_goes_to_the_highest_class_waiting() {
    let (limiter, _) = limiter(1, 10);
    let held = limiter.acquire(ClassId(1)).await.expect("free slot");
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut waiting = Vec::new();
    for class in [2, 1, 0, 2, 0] {
        let (limiter, order) = (limiter.clone(), order.clone());
        waiting.push(tokio::spawn(async move {
            let permit = limiter.acquire(ClassId(class)).await.expect("admitted");
            order.lock().expect("order").push(class);
            drop(permit);
        }));
        tokio::task::yield_now().await;
    }
    assert!(limiter.would_wait(ClassId(0)));
    drop(held);
    for task in waiting {
        task.await.expect("task");
    }
    assert_eq!(*order.lock().expect("order"), vec![0, 0, 1, 2, 2]);
    assert_eq!(limiter.in_flight(), 0);
}

#[tokio::test]
async fn a_full_queue_sheds_the_lowest_class_first() {
    let (limiter, _) = limiter(1, 1);
    let _held = limiter.acquire(ClassId(0)).await.expect("free slot");
    let low = {
        let limiter = limiter.clone();
        tokio::spawn(async move { limiter.acquire(ClassId(2)).await.map(|_| ()) })
    };
    tokio::task::yield_now().await;
    // The queue holds the low one; an equal class is refused, a higher one displaces it.
    assert_eq!(
        limiter.acquire(ClassId(2)).await.map(|_| ()),
        Err(Shed::QueueFull)
    );
    let high = {
        let limiter = limiter.clone();
        tokio::spawn(async move { limiter.acquire(ClassId(0)).await.map(|_| ()) })
    };
    assert_eq!(low.await.expect("task"), Err(Shed::QueueFull));
    high.abort();
}

#[tokio::test]
async fn a_wait_that_cannot_end_in_time_is_refused_at_once() {
    let (limiter, _) = limiter(1, 100);
    // The origin holds a slot 450 ms; the longest wait is 2 s.
    limiter.lock().service_secs = 0.45;
    let _held = limiter.acquire(ClassId(1)).await.expect("free slot");
    let mut queued = Vec::new();
    for _ in 0..5 {
        let limiter = limiter.clone();
        queued.push(tokio::spawn(
            async move { limiter.acquire(ClassId(1)).await },
        ));
        tokio::task::yield_now().await;
    }
    assert_eq!(
        limiter.lock().queued,
        5,
        "the fifth has 4 x 450 ms ahead: it fits in 2 s"
    );
    assert_eq!(
        limiter.acquire(ClassId(1)).await.map(|_| ()),
        Err(Shed::WouldTimeOut)
    );
    // A higher class has nobody ahead of it.
    let first = {
        let limiter = limiter.clone();
        tokio::spawn(async move { limiter.acquire(ClassId(0)).await.map(|_| ()) })
    };
    tokio::task::yield_now().await;
    assert_eq!(limiter.lock().queued, 6);
    first.abort();
    for task in queued {
        task.abort();
    }
}

#[tokio::test(start_paused = true)]
async fn a_wait_past_its_deadline_is_shed_and_leaves_the_queue() {
    let (limiter, _) = limiter(1, 10);
    let held = limiter.acquire(ClassId(0)).await.expect("free slot");
    assert_eq!(
        limiter.acquire(ClassId(1)).await.map(|_| ()),
        Err(Shed::Timeout)
    );
    assert_eq!(limiter.lock().queued, 0);
    drop(held);
    assert!(!limiter.would_wait(ClassId(1)));
}
