/* SPDX-License-Identifier: MIT */
#ifndef AG_POOL_H
#define AG_POOL_H

#include <stdint.h>
#include <ag/export.h>

/*
 * libag's thread pool: one per process, shared by parallel backward and by
 * intra-op parallelism, started on first use.
 *
 * n threads take part in parallel work: the thread that calls in plus n - 1
 * pool workers.  The size comes from ag_set_num_threads(), else from
 * AG_NUM_THREADS in the environment, else from the number of online CPUs.
 * After fork() the child starts a fresh pool on first use.
 */

/*
 * Sets the thread count (0: the online CPUs; at most 256).  A running pool
 * of another size is stopped and the new size starts on next use.  Stopping
 * joins the workers, so it happens only while no thread is inside a
 * backward (ag_backward, ag_grad) or an ag_parallel_for; otherwise the call
 * changes nothing and returns -AG_EBUSY at once, never waiting.  It does
 * not wait for idle because in a service whose request threads always run
 * backward, idle may never come; a caller that must resize can retry, and
 * one that cannot is told why.  Asking for the size the pool already has
 * always succeeds.
 *
 * Returns 0; -AG_EBUSY (another thread runs parallel work: retry later);
 * or -AG_EINVAL: out of range, or called inside parallel work on this
 * thread (a pool task, a custom function's backward, an ag_parallel_for
 * chunk), where waiting for the pool to be idle would wait for itself.
 */
AG_API int ag_set_num_threads(int n);

/* The thread count the pool has, or will have when it starts. */
AG_API int ag_get_num_threads(void);

/*
 * Calls fn(begin, end, arg) over disjoint ranges covering [0, n), each at
 * least grain long except possibly the last (grain < 1 counts as 1), on the
 * calling thread and on idle pool workers, and returns when all have
 * returned.  n <= grain, or a pool of one thread, runs fn(0, n, arg) inline;
 * so does a call made while as many threads from outside the pool are in
 * parallel work as the pool has threads (request threads of a service:
 * every core is busy already; docs/serving.md).
 * Safe inside a pool task and in nested ag_parallel_for(): the caller helps
 * only with its own chunks while it waits.  fn runs with the grad mode of
 * the thread that runs it.  Returns 0, or -AG_EINVAL (fn NULL or n < 0).
 */
AG_API int ag_parallel_for(int64_t n, int64_t grain,
			   void (*fn)(int64_t begin, int64_t end, void *arg),
			   void *arg);

#endif /* AG_POOL_H */
