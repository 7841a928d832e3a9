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

/*
 * Admission gates: at most `slots` threads hold a place at once; the
 * others wait in arrival order.  For a service with more request threads
 * than cores: the kernel preempts a busy thread wherever its time slice
 * ends, mid-request, and that request then waits for all the other
 * threads' slices (tens to hundreds of ms at 64 threads on 2 CPUs); behind
 * a gate with as many places as cores, requests are not preempted by each
 * other and places move only at request boundaries.  docs/serving.md
 * measures it.
 *
 * A request thread calls ag_gate_enter() before a request and
 * ag_gate_leave() after it; a thread that runs requests back to back can
 * instead stay in and call ag_gate_yield() between them, which hands its
 * place on only once it has held it for the gate's quantum and someone
 * waits (fewer hand-offs, each of which costs a sleep and a wake-up).  A
 * thread must leave before it blocks on anything a waiting thread may be
 * needed for, as with any lock; a place held when its thread exits is
 * handed on.  A thread holds at most one place at a time.  A thread that
 * has waited keeps a pipe (two descriptors) until it exits: a wake-up
 * through a pipe runs the waiter on the waker's CPU.
 *
 * Each place keeps the big buffers (activations) its holders free, up to
 * 4 MiB, for its next holder, whose own would be cold after its wait;
 * ag_trim() empties a place's at its next use, ag_gate_free() at once.
 *
 * In the child of fork() a gate has no waiters and every place is free
 * but the forking thread's own, if it held one.
 */
struct ag_gate;

/*
 * A gate of slots places (0: the number of online CPUs) whose holders
 * yield after quantum_us microseconds (0: at every ag_gate_yield() that
 * finds a waiter).  NULL with AG_EINVAL (slots < 0 or > 65536, quantum_us
 * < 0) or AG_ENOMEM.
 */
AG_API struct ag_gate *ag_gate_new(int slots, int64_t quantum_us);

/*
 * Frees g; NULL is a no-op.  -AG_EBUSY, freeing nothing, while a place is
 * held or a thread waits.
 */
AG_API int ag_gate_free(struct ag_gate *g);

/*
 * Takes a place at g, waiting behind the threads that came before.
 * -AG_EINVAL if g is NULL or this thread holds a place (at any gate).
 */
AG_API int ag_gate_enter(struct ag_gate *g);

/*
 * Gives this thread's place at g to the oldest waiter, or frees it.
 * -AG_EINVAL if this thread holds no place at g.
 */
AG_API int ag_gate_leave(struct ag_gate *g);

/*
 * A request boundary: if this thread has held its place for the quantum
 * and a thread waits, the place goes to the oldest waiter and this thread
 * waits behind the others; otherwise returns at once (an atomic load when
 * nobody waits).  -AG_EINVAL if this thread holds no place at g.
 */
AG_API int ag_gate_yield(struct ag_gate *g);

/* The number of threads waiting at g now (0 for NULL): a queue length. */
AG_API int ag_gate_waiting(const struct ag_gate *g);

#endif /* AG_POOL_H */
