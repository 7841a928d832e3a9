/* SPDX-License-Identifier: MIT */
#ifndef AG_POOL_POOL_H
#define AG_POOL_POOL_H

/*
 * Internal interface of the work-stealing pool (engine/pool/).  Nothing
 * here is exported from the shared library; see docs/pool.md for the
 * design and the rules that keep nested waits free of deadlock.
 *
 * Tasks are intrusive: embed a struct ag_task in your own struct, set run,
 * and recover yours with ag_container_of() in run.  The pool never allocates
 * or frees a task; a task's memory must stay valid until its run has
 * started (run may free it).
 *
 * Groups count unfinished tasks.  The rules (docs/pool.md):
 *  1. Only one thread waits on a group at a time: its owner.
 *  2. A task submits only to its own group, or to groups it waits on
 *     itself before it returns (fork-join nesting).
 *  3. Between its first submit to a group and its wait on it, the owner
 *     submits to no other group (tasks it runs meanwhile may use nested
 *     groups as in 2).
 */
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

struct ag_group;

struct ag_task {
	void (*run)(struct ag_task *t);
	struct ag_group *group; /* set by ag__group_submit() */
	struct ag_task *next; /* pool private: the injection queue */
};

struct ag_group {
	atomic_int_least64_t pending; /* submitted and not yet finished */
	/*
	 * The outermost group this one was opened under: itself when opened
	 * outside any task, else the family of the task that opened it.
	 */
	struct ag_group *family;
};

/* The most pool threads (workers), besides the threads that call in. */
#define AG_POOL_MAX_WORKERS 255

static inline void ag__task_init(struct ag_task *t,
				 void (*run)(struct ag_task *t))
{
	t->run = run;
	t->group = NULL;
	t->next = NULL;
}

void ag__group_init(struct ag_group *g);

/*
 * From any thread.  A pool worker pushes t on its own deque (no lock, no
 * allocation); any other thread appends it to the injection queue (one
 * mutex) and starts the pool if needed.  If a worker's deque cannot grow,
 * t runs inline before this returns.
 */
void ag__group_submit(struct ag_group *g, struct ag_task *t);

/*
 * Returns when every task submitted to g, including tasks submitted to g by
 * g's tasks, has finished; their effects are visible to the caller.  The
 * caller helps, and sleeps when it cannot help.  It runs only tasks of g;
 * a caller outside any task also runs tasks of groups opened under g (its
 * family), which share g's work and nest no deeper than g's own tasks.
 * After it returns g may be reused or freed.
 */
void ag__group_wait(struct ag_group *g);

/* True when every task submitted to g has finished (acquire). */
static inline bool ag__group_done(struct ag_group *g)
{
	return atomic_load_explicit(&g->pending, memory_order_acquire) == 0;
}

bool ag__pool_is_worker(void);
/* 0 .. AG_POOL_MAX_WORKERS - 1 on a pool worker, -1 on any other thread. */
int ag__pool_worker_id(void);
/* Starts the pool if needed; returns the thread count (workers + 1). */
int ag__pool_ensure(void);
/*
 * Bracket a parallel region of a thread outside the pool: from before its
 * first ag__pool_ensure() or submit until its last group wait returned
 * (ag_parallel_for, the engine's backward).  While any thread is inside
 * one, ag_set_num_threads() refuses with AG_EBUSY instead of stopping
 * workers that the region may be waiting for.  They nest; on a pool
 * worker they do nothing.
 */
void ag__pool_enter(void);
void ag__pool_leave(void);

/*
 * Element count below which a kernel should not call ag_parallel_for().
 * AG_PARALLEL_THRESHOLD_DEFAULT until measured per kernel; AG_PAR_THRESHOLD
 * in the environment overrides it (read once).
 */
#define AG_PARALLEL_THRESHOLD_DEFAULT 32768
int64_t ag__parallel_threshold(void);

/* ---- tracing (engine/pool/trace.c) ---- */

extern atomic_int ag__trace_enabled;

/* One relaxed load: test this before taking timestamps. */
static inline bool ag__trace_on(void)
{
	return atomic_load_explicit(&ag__trace_enabled, memory_order_relaxed);
}

/*
 * CLOCK_MONOTONIC in nanoseconds: the clock of ag__trace_slice() and of
 * the gates' quanta (gate.c).
 */
uint64_t ag__trace_now(void);

/*
 * Records a complete slice on the calling thread's lane.  name is not
 * copied: it must stay valid until the trace is stopped (a node name or a
 * string literal).  Cheap no-op when tracing is off.
 */
void ag__trace_slice(const char *name, uint64_t t0_ns, uint64_t t1_ns);
/* Same, with "args": {"begin": begin, "end": end}. */
void ag__trace_slice_range(const char *name, uint64_t t0_ns, uint64_t t1_ns,
			   int64_t begin, int64_t end);
/* Starts the trace named by AG_TRACE, once per process; pool start calls it. */
void ag__trace_env(void);
/* For the pool's atfork child handler. */
void ag__trace_atfork_child(void);
/* Stops and writes a trace started from AG_TRACE (pool's exit path). */
void ag__trace_fini(void);

#endif /* AG_POOL_POOL_H */
