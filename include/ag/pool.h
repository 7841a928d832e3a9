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
 * Sets the thread count (0: the online CPUs; at most 256).  Call it before
 * or between parallel calls, not from inside a pool task: a running pool is
 * drained and stopped, and the new size starts on next use.  Returns 0, or
 * -AG_EINVAL (out of range, or called from a pool worker).
 */
AG_API int ag_set_num_threads(int n);

/* The thread count the pool has, or will have when it starts. */
AG_API int ag_get_num_threads(void);

/*
 * Calls fn(begin, end, arg) over disjoint ranges covering [0, n), each at
 * least grain long except possibly the last (grain < 1 counts as 1), on the
 * calling thread and on idle pool workers, and returns when all have
 * returned.  n <= grain, or a pool of one thread, runs fn(0, n, arg) inline.
 * Safe inside a pool task and in nested ag_parallel_for(): the caller helps
 * only with its own chunks while it waits.  fn runs with the grad mode of
 * the thread that runs it.  Returns 0, or -AG_EINVAL (fn NULL or n < 0).
 */
AG_API int ag_parallel_for(int64_t n, int64_t grain,
			   void (*fn)(int64_t begin, int64_t end, void *arg),
			   void *arg);

#endif /* AG_POOL_H */
