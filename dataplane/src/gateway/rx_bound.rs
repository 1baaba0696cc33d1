//! How long a frame may wait in an RX ring before the worker takes it.
//!
//! A 2,048-frame ring is milliseconds of queue at a veth's rate: under a
//! standing overload every frame forwarded would have waited that long.
//! AF_XDP stamps nothing, so the wait is estimated as the ring's occupancy
//! times the worker's measured time per frame, and CoDel (RFC 8289) decides
//! what to shed:
//!
//! - A queue above the budget that falls back within an interval (four
//!   budgets), or drains fast enough to within the next, is a burst and
//!   passes whole.
//! - One that stays above it for a whole interval and does not drain is
//!   standing. From then until it first falls back, frames are shed from the
//!   head (so what is forwarded is fresh) by CoDel's control law: one, then
//!   the next an interval / sqrt(count) later.
//! - What no control law slows (a UDP flood) is held at twice the budget:
//!   beyond that, a standing queue is shed at every turn.
//! - Unless the queue is TCP's. TCP slows down by itself, and a lost
//!   segment costs it far more than a queue does: a bulk flow that filled
//!   the worker lost a sixth of its segments to the twice-the-budget bound
//!   (`bench/run.sh --scenarios 7`: retransmits by the hundred thousand
//!   where the kernel had none). When the frames at the head of a queue
//!   standing past twice the budget are TCP (three in four of a sample),
//!   the ring is held at `RESPONSIVE_BUDGETS` instead (about the whole
//!   ring for 1500-byte frames), and nothing is shed below it but the
//!   law's frames. The whole ring is held so, whatever
//!   each frame carries: a ring is one FIFO, and sparing TCP frames one by
//!   one would let a flood that claims to be TCP push everyone else's
//!   frames out; this way such a flood raises the ring's wait for all
//!   (to 16 budgets at most) and sheds nobody first.
//! - The control law's frame, when ECN-capable, is marked Congestion
//!   Experienced and forwarded instead (RFC 8289 section 5.2, RFC 3168):
//!   an ECN-capable TCP flow slows down without losing a segment, and is
//!   held near the budget. A TCP frame the law picks that is not
//!   ECN-capable is forwarded too: its loss would cost a retransmit, not
//!   slow the flow to the budget.

/// Frames a worker takes from one RX ring per turn. Defined here, the
/// lowest of the worker's modules, so that the bound's sample sizes and the
/// worker's receive loop read one constant without importing each other.
pub const BATCH: usize = 64;
/// Frames always allowed to queue, whatever the estimate: one receive batch
/// and the next.
const MIN_FRAMES: u64 = 2 * BATCH as u64;
/// Turns handling fewer frames than this say more about the loop's fixed
/// cost than about the time per frame.
const MIN_SAMPLE: usize = BATCH / 2;
/// How long, in budgets, a queue must stay above the budget to be standing:
/// long enough that the backlog of a worker descheduled for a millisecond
/// or two drains (at light load) before anything is shed.
const INTERVAL_BUDGETS: u64 = 4;
/// Beyond this many budgets, a standing queue is shed at every turn.
const HARD_BUDGETS: u64 = 2;
/// The same for a standing queue whose head is TCP's.
const RESPONSIVE_BUDGETS: u64 = 16;
/// Time per frame assumed before any is measured: small, so nothing is shed
/// on a guess.
const INITIAL_NS_PER_FRAME: u64 = 100;

#[derive(Debug, Clone, Copy, Default)]
struct RingState {
    /// When this interval above the budget began, and the queue then.
    above_since: Option<(u64, u64)>,
    /// Standing: shedding by the control law until the queue falls back.
    dropping: Option<Dropping>,
}

/// CoDel's dropping state: frames shed so far, and when the next goes.
#[derive(Debug, Clone, Copy)]
struct Dropping {
    count: u32,
    next_ns: u64,
}

impl Dropping {
    /// The next drop time after `now_ns`: an interval / sqrt(count) on.
    fn schedule(&mut self, now_ns: u64, interval_ns: u64) {
        self.next_ns = now_ns + (interval_ns as f64 / f64::from(self.count).sqrt()) as u64;
    }
}

/// What to take from the head of a ring whose queue stands: `hard`
/// frames to shed, then, when `law` is set, one frame the control law
/// drops, or marks when it is ECN-capable (or forwards when it is TCP).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Excess {
    pub hard: u32,
    pub law: bool,
}

impl Excess {
    /// Frames taken from the head in all.
    pub fn total(self) -> u32 {
        self.hard + u32::from(self.law)
    }
}

/// The latency bound of one worker's RX rings.
#[derive(Debug, Clone)]
pub struct RxBound {
    budget_ns: u64,
    /// Time per frame, 1/8 EWMA of busy turns, in ns × 8 (fixed point).
    ns_per_frame_x8: u64,
    rings: Vec<RingState>,
    /// When the current turn of the worker's loop began, and the frames it
    /// has received so far.
    turn_ns: u64,
    turn_frames: usize,
}

impl RxBound {
    /// A bound of `budget_us` microseconds (0: none) over `rings` rings.
    pub fn new(budget_us: u32, rings: usize) -> RxBound {
        RxBound {
            budget_ns: u64::from(budget_us) * 1000,
            ns_per_frame_x8: INITIAL_NS_PER_FRAME * 8,
            rings: vec![RingState::default(); rings],
            turn_ns: 0,
            turn_frames: 0,
        }
    }

    /// Starts a turn of the worker's loop at `now_ns`: the last turn's cost,
    /// receive to transmit, over the frames it received is a sample.
    #[inline]
    pub fn begin_turn(&mut self, now_ns: u64) {
        self.observe(self.turn_frames, now_ns.saturating_sub(self.turn_ns));
        self.turn_ns = now_ns;
        self.turn_frames = 0;
    }

    /// Counts frames received in this turn.
    #[inline]
    pub fn received(&mut self, frames: usize) {
        self.turn_frames += frames;
    }

    /// Learns the time per frame from a turn of the loop that handled
    /// `frames` in `ns`.
    #[inline]
    pub fn observe(&mut self, frames: usize, ns: u64) {
        if frames >= MIN_SAMPLE {
            let sample = ns.saturating_mul(8) / frames as u64;
            self.ns_per_frame_x8 = self.ns_per_frame_x8 - self.ns_per_frame_x8 / 8 + sample / 8;
        }
    }

    /// The time per frame measured so far, in ns.
    pub fn ns_per_frame(&self) -> u64 {
        self.ns_per_frame_x8 / 8
    }

    /// Frames that fit in the budget at the measured time per frame.
    pub fn limit(&self) -> u64 {
        (self.budget_ns * 8 / self.ns_per_frame_x8.max(1)).max(MIN_FRAMES)
    }

    /// Which of the `queued` frames waiting in `ring` at `now_ns` to take
    /// from its head; `responsive` says whether the frames at the head are
    /// TCP's, asked only of a queue standing past twice the budget.
    #[inline]
    pub fn excess(&mut self, ring: usize, queued: u32, now_ns: u64, responsive: impl FnOnce() -> bool) -> Excess {
        if self.budget_ns == 0 {
            return Excess::default();
        }
        let limit = self.limit();
        let interval = INTERVAL_BUDGETS * self.budget_ns;
        let st = &mut self.rings[ring];
        let queued = u64::from(queued);
        if queued <= limit {
            *st = RingState::default();
            return Excess::default();
        }
        if st.dropping.is_none() {
            match st.above_since {
                None => st.above_since = Some((now_ns, queued)),
                Some((t, _)) if now_ns.saturating_sub(t) < interval => {}
                // Draining fast enough to be back under the budget within
                // another interval (a descheduled worker's backlog at light
                // load): watch another interval.
                Some((_, then)) if queued - limit <= then.saturating_sub(queued) => {
                    st.above_since = Some((now_ns, queued));
                }
                // Standing: the law's first drop is due now.
                Some(_) => st.dropping = Some(Dropping { count: 0, next_ns: now_ns }),
            }
        }
        let Some(d) = &mut st.dropping else { return Excess::default() };
        let responsive = queued > HARD_BUDGETS * limit && responsive();
        let hard = queued.saturating_sub(if responsive { RESPONSIVE_BUDGETS } else { HARD_BUDGETS } * limit);
        // The law's drops fall due at most one a turn: a turn is far
        // shorter than an interval / sqrt(count) until count is in the
        // thousands, and by then the hard bound sheds.
        let law = now_ns >= d.next_ns && hard < queued - limit;
        if law {
            d.count = d.count.saturating_add(1);
            d.schedule(now_ns, interval);
        }
        Excess { hard: hard as u32, law }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The frames at the head are not TCP's.
    fn udp() -> bool {
        false
    }

    /// A bound of 250 µs whose worker takes 1 µs per frame: 250 frames.
    fn measured() -> RxBound {
        let mut b = RxBound::new(250, 1);
        for _ in 0..200 {
            b.observe(64, 64_000);
        }
        b
    }

    #[test]
    fn the_time_per_frame_is_learned_from_busy_turns_only() {
        let mut b = measured();
        assert_eq!(b.ns_per_frame(), 1000);
        b.observe(1, 50_000);
        assert_eq!(b.ns_per_frame(), 1000, "a one-frame turn is the loop's fixed cost, not a sample");
        assert_eq!(b.limit(), 250);
    }

    #[test]
    fn a_burst_that_drains_within_the_interval_is_not_shed() {
        let mut b = measured();
        assert_eq!(b.excess(0, 2000, 0, udp).total(), 0);
        assert_eq!(b.excess(0, 1000, 100_000, udp).total(), 0);
        assert_eq!(b.excess(0, 200, 200_000, udp).total(), 0, "back under the budget");
        assert_eq!(b.excess(0, 2000, 300_000, udp).total(), 0, "a new burst starts a new interval");
        assert_eq!(b.excess(0, 2000, 1_200_000, udp).total(), 0, "still within the new interval");
    }

    #[test]
    fn a_standing_queue_above_twice_the_budget_is_shed_down_to_it_at_once() {
        let mut b = measured();
        assert_eq!(b.excess(0, 2000, 0, udp).total(), 0);
        assert_eq!(b.excess(0, 1800, 999_000, udp).total(), 0);
        assert_eq!(
            b.excess(0, 1500, 1_000_000, udp).total(),
            1001,
            "standing: down to 2 x 250 frames, and the law's first drop"
        );
        assert_eq!(b.excess(0, 900, 1_010_000, udp).total(), 400, "held at twice the budget at every turn");
    }

    #[test]
    fn a_standing_queue_within_twice_the_budget_is_shed_one_frame_at_a_time() {
        let mut b = measured();
        assert_eq!(b.excess(0, 400, 0, udp).total(), 0);
        assert_eq!(b.excess(0, 400, 1_000_000, udp).total(), 1, "standing: CoDel's first drop");
        assert_eq!(b.excess(0, 400, 1_010_000, udp).total(), 0, "the next is an interval later");
        assert_eq!(b.excess(0, 400, 1_999_000, udp).total(), 0);
        assert_eq!(b.excess(0, 400, 2_000_000, udp).total(), 1, "count 1: one interval");
        assert_eq!(b.excess(0, 400, 2_700_000, udp).total(), 0, "count 2: interval / sqrt(2) = 707 us");
        assert_eq!(b.excess(0, 400, 2_708_000, udp).total(), 1);
        assert_eq!(b.excess(0, 250, 2_710_000, udp).total(), 0, "fallen back under the budget");
        assert_eq!(b.excess(0, 400, 2_720_000, udp).total(), 0, "the next excess is a burst again");
    }

    #[test]
    fn a_queue_over_twice_the_budget_that_is_a_burst_passes_whole() {
        let mut b = measured();
        assert_eq!(b.excess(0, 2000, 0, udp).total(), 0);
        assert_eq!(
            b.excess(0, 1200, 500_000, udp).total(),
            0,
            "within the interval: nothing is shed, however far above"
        );
    }

    #[test]
    fn a_backlog_draining_within_the_next_interval_is_not_shed() {
        let mut b = measured();
        assert_eq!(b.excess(0, 2000, 0, udp).total(), 0, "a worker back from a stall finds a backlog");
        assert_eq!(
            b.excess(0, 1100, 1_000_000, udp).total(),
            0,
            "900 drained in an interval, 850 to go: left to drain"
        );
        assert_eq!(b.excess(0, 800, 2_000_000, udp).total(), 301, "300 drained, 550 to go: too slow, shed");
        assert_eq!(b.excess(0, 600, 2_010_000, udp).total(), 100, "and held at twice the budget from then on");
    }

    #[test]
    fn the_control_laws_frame_is_told_apart_from_the_hard_bounds() {
        let mut b = measured();
        assert_eq!(b.excess(0, 400, 0, udp), Excess::default());
        assert_eq!(b.excess(0, 400, 1_000_000, udp), Excess { hard: 0, law: true }, "the law's first: markable");
        let mut b = measured();
        assert_eq!(b.excess(0, 2000, 0, udp), Excess::default());
        assert_eq!(b.excess(0, 1500, 1_000_000, udp), Excess { hard: 1000, law: true }, "past twice the budget: shed");
        assert_eq!(b.excess(0, 900, 1_010_000, udp), Excess { hard: 400, law: false });
    }

    #[test]
    fn a_standing_queue_of_tcp_is_held_at_sixteen_budgets_instead() {
        let mut b = measured();
        assert_eq!(b.excess(0, 5000, 0, || true), Excess::default());
        assert_eq!(
            b.excess(0, 3000, 1_000_000, || true),
            Excess { hard: 0, law: true },
            "standing, TCP's: the law's frame only"
        );
        assert_eq!(b.excess(0, 5000, 1_010_000, || true), Excess { hard: 1000, law: false });
        assert_eq!(b.excess(0, 5000, 1_020_000, udp), Excess { hard: 4500, law: false }, "not TCP's");
    }

    #[test]
    fn a_queue_within_twice_the_budget_is_not_sampled() {
        let mut b = measured();
        assert_eq!(b.excess(0, 400, 0, || unreachable!()), Excess::default());
        assert_eq!(b.excess(0, 400, 1_000_000, || unreachable!()).total(), 1, "the law's drop, whatever the head");
    }

    #[test]
    fn a_budget_of_zero_sheds_nothing() {
        let mut b = RxBound::new(0, 1);
        b.observe(64, 640_000);
        assert_eq!(b.excess(0, 2048, 0, udp).total(), 0);
        assert_eq!(b.excess(0, 2048, 10_000_000, udp).total(), 0);
    }

    #[test]
    fn at_least_two_batches_may_always_queue() {
        let mut b = RxBound::new(1, 1);
        b.observe(64, 64_000_000);
        assert_eq!(b.limit(), MIN_FRAMES);
    }
}
