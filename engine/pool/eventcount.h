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
 * No lost wake-up: prepare increments waiters (seq_cst RMW) before it
 * re-checks for work with seq_cst loads, and the notifier loads waiters
 * (seq_cst) after its seq_cst publication.  In the single total order of
 * seq_cst operations either the notifier's load follows the increment, so it
 * sees a waiter and bumps seq (and commit's futex_wait then returns at once
 * because seq no longer equals key), or it precedes it, and then the
 * publication precedes the waiter's re-check, which sees the work.
 *
 * The futex only puts threads to sleep; all memory ordering is carried by
 * the atomics, which is what ThreadSanitizer checks.
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
	atomic_fetch_add_explicit(&ec->waiters, 1, memory_order_seq_cst);
	return atomic_load_explicit(&ec->seq, memory_order_seq_cst);
}

static inline void ag__ec_cancel(struct ag_ec *ec)
{
	atomic_fetch_sub_explicit(&ec->waiters, 1, memory_order_relaxed);
}

static inline void ag__ec_commit(struct ag_ec *ec, unsigned key)
{
	/* atomic_uint has the layout of the kernel's u32 futex word. */
	while (atomic_load_explicit(&ec->seq, memory_order_acquire) == key)
		syscall(SYS_futex, (unsigned *)&ec->seq, FUTEX_WAIT_PRIVATE,
			key, NULL, NULL, 0);
	atomic_fetch_sub_explicit(&ec->waiters, 1, memory_order_relaxed);
}

/* Wakes up to n sleepers (INT_MAX: all) if any thread is preparing. */
static inline void ag__ec_notify(struct ag_ec *ec, int n)
{
	if (!atomic_load_explicit(&ec->waiters, memory_order_seq_cst))
		return;
	atomic_fetch_add_explicit(&ec->seq, 1, memory_order_seq_cst);
	syscall(SYS_futex, (unsigned *)&ec->seq, FUTEX_WAKE_PRIVATE, n, NULL,
		NULL, 0);
}

#endif /* AG_POOL_EVENTCOUNT_H */
