/* SPDX-License-Identifier: MIT */
#ifndef AG_POOL_EVENTCOUNT_H
#define AG_POOL_EVENTCOUNT_H

/*
 * Eventcount: lets a thread sleep until "something changed" without a lock
 * on the fast path of the thread that changes it.
 *
 * A waiter:                          A notifier:
 *	key = ag__ec_prepare(ec);          publish work (a seq_cst store
 *	if (work is visible)               or RMW);
 *		ag__ec_cancel(ec);         ag__ec_notify(ec, n);
 *	else
 *		ag__ec_commit(ec, key);
 *
 * seq is the futex word.  An odd seq means "a wake-up is on its way": only
 * a notifier makes it odd (even -> odd, then futex_wake), only a waiter
 * makes it even again (when it leaves commit, or in prepare), and a waiter
 * never sleeps on an odd key.  While it is odd, further notifies cost two
 * loads and no syscall: a burst of submits wakes a sleeper once, not once
 * per submit while the sleeper is being scheduled.
 *
 * No lost wake-up.  Let X sleep on key k (even) after its re-check missed a
 * publication P.  X's increment of waiters, its load of k and its re-check
 * all precede P in the single total order S of seq_cst operations, and the
 * notifier's loads of waiters and seq follow P.  So the notifier sees X
 * counted and reads seq == k or a later value.  From k the only change is a
 * notifier's CAS k -> k + 1 followed by its futex_wake; whether the CAS is
 * ours or another notifier's, it comes after X read k, so X's futex_wait
 * either finds seq != k and returns, or is asleep and is woken.  With
 * n == INT_MAX every sleeper is woken.  With n == 1 (free workers, which are
 * interchangeable) the one woken may be another thread Y; Y clears the odd
 * bit after the notifier read it (or the notifier would have seen it even
 * and woken someone itself), so Y's next scan follows P.
 *
 * The futex only sleeps; all memory ordering is carried by the atomics,
 * which is what ThreadSanitizer checks.
 */
#include <limits.h>
#include <stdatomic.h>
#include <stdint.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

struct ag_ec {
	_Alignas(64) atomic_uint seq;
	atomic_int waiters;
};

static inline void ag__ec_init(struct ag_ec *ec)
{
	atomic_init(&ec->seq, 0);
	atomic_init(&ec->waiters, 0);
}

static inline unsigned ag__ec_prepare(struct ag_ec *ec)
{
	unsigned key;

	atomic_fetch_add_explicit(&ec->waiters, 1, memory_order_seq_cst);
	key = atomic_load_explicit(&ec->seq, memory_order_seq_cst);
	/*
	 * A wake-up in flight: take it (the caller re-checks anyway) so
	 * that we never sleep on an odd key.
	 */
	while ((key & 1) && !atomic_compare_exchange_weak_explicit(
				    &ec->seq, &key, key + 1,
				    memory_order_seq_cst, memory_order_seq_cst))
		;
	return key & 1 ? key + 1 : key;
}

static inline void ag__ec_cancel(struct ag_ec *ec)
{
	atomic_fetch_sub_explicit(&ec->waiters, 1, memory_order_relaxed);
}

static inline void ag__ec_commit(struct ag_ec *ec, unsigned key)
{
	unsigned v;

	/* atomic_uint has the layout of the kernel's u32 futex word. */
	while ((v = atomic_load_explicit(&ec->seq, memory_order_acquire)) ==
	       key)
		syscall(SYS_futex, (unsigned *)&ec->seq, FUTEX_WAIT_PRIVATE,
			key, NULL, NULL, 0);
	/* The wake-up arrived: let the next notify send another. */
	if (v & 1)
		atomic_compare_exchange_strong_explicit(&ec->seq, &v, v + 1,
							memory_order_seq_cst,
							memory_order_relaxed);
	atomic_fetch_sub_explicit(&ec->waiters, 1, memory_order_relaxed);
}

/*
 * Wakes up to n sleepers (INT_MAX: all) if any thread is preparing.  Every
 * notify of one eventcount must use the same n: skipping while a wake-up
 * is in flight is only right if that wake-up reaches as many threads.
 */
static inline void ag__ec_notify(struct ag_ec *ec, int n)
{
	unsigned v;

	if (!atomic_load_explicit(&ec->waiters, memory_order_seq_cst))
		return;
	v = atomic_load_explicit(&ec->seq, memory_order_seq_cst);
	/*
	 * Odd, or the CAS fails (only a notifier moves seq off an even
	 * value): a wake-up is already on its way.
	 */
	if ((v & 1) || !atomic_compare_exchange_strong_explicit(
			       &ec->seq, &v, v + 1, memory_order_seq_cst,
			       memory_order_relaxed))
		return;
	syscall(SYS_futex, (unsigned *)&ec->seq, FUTEX_WAKE_PRIVATE, n, NULL,
		NULL, 0);
}

/*
 * Wakes every sleeper, whatever is in flight (shutting down an eventcount
 * whose notifies wake one).
 */
static inline void ag__ec_wake_all(struct ag_ec *ec)
{
	unsigned v = atomic_load_explicit(&ec->seq, memory_order_seq_cst);

	/* Sleepers hold even keys: make seq differ from all of them. */
	if (!(v & 1))
		atomic_compare_exchange_strong_explicit(&ec->seq, &v, v + 1,
							memory_order_seq_cst,
							memory_order_relaxed);
	syscall(SYS_futex, (unsigned *)&ec->seq, FUTEX_WAKE_PRIVATE, INT_MAX,
		NULL, NULL, 0);
}

#endif /* AG_POOL_EVENTCOUNT_H */
