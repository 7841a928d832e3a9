// SPDX-License-Identifier: MIT
/*
 * The process-wide work-stealing pool: worker lifecycle, task groups and
 * ag_parallel_for().  docs/pool.md explains the design and why nested waits
 * cannot deadlock.
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <ag/error.h>
#include <ag/pool.h>

#include "internal.h"
#include "deque.h"
#include "eventcount.h"
#include "pool.h"
#include "lib/env.h"

#if defined(__x86_64__) || defined(__i386__)
#define cpu_relax() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ __volatile__("yield" ::: "memory")
#else
#define cpu_relax() __asm__ __volatile__("" ::: "memory")
#endif

/*
 * Before sleeping, a thread polls this many times for work, with a short
 * pause between polls: enough to bridge the gap between two nodes of a
 * backward pass, far too little to burn a core while the process is idle.
 */
#define SPIN_ROUNDS 16
#define SPIN_PAUSES 32

/* Group waiters sleep on one of these, chosen by the group's address. */
#define WAIT_SLOTS 64

/* ag_parallel_for: chunks per thread, and the cap on chunks per call. */
#define PF_CHUNKS_PER_THREAD 4
#define PF_MAX_CHUNKS 1024
#define PF_STACK_CHUNKS 16

#define WORKER_STACK (8u << 20)

/* On exit, how long to wait for busy workers before leaving them be. */
#define EXIT_JOIN_NS 100000000L

/*
 * Threads outside the pool that submit get a deque of their own, so their
 * submits are lock-free pushes too; past this many at once they fall back
 * to the injection queue.
 */
#define MAX_EXT 64

/* A deque and its owner: a pool worker, or a thread outside the pool. */
struct ag_worker {
	struct ag_deque dq;
	pthread_t thread; /* workers */
	int id; /* workers: 0..; outside threads: -1 */
	atomic_int claimed; /* outside threads' slots: owned by a thread */
	/* outside threads' slots: the owner is inside a parallel region */
	atomic_int busy;
};

static struct {
	pthread_mutex_t lock; /* start, stop, resize */
	/* threads in a parallel region that have no outside slot */
	atomic_int busy_unslotted;
	/* threads outside the pool inside a parallel region: ag_parallel_for
	 * runs inline once they fill the pool (request threads) */
	atomic_int outside_active;
	atomic_int running; /* workers started and not stopping */
	atomic_int stop; /* workers exit once they find no work */
	atomic_int nworkers; /* slots thieves scan */
	atomic_int requested; /* ag_set_num_threads(); 0: not set */
	int nstarted; /* threads to join, under lock */
	/* Slots are never freed: a slow thief may still read a deque. */
	struct ag_worker *w[AG_POOL_MAX_WORKERS];

	/* Deques of threads outside the pool; next_ext only grows. */
	pthread_mutex_t ext_lock;
	atomic_int next_ext;
	struct ag_worker *ext[MAX_EXT];

	/* Tasks submitted by threads that are not workers. */
	pthread_mutex_t inj_lock;
	struct ag_task *inj_head, *inj_tail;
	atomic_long inj_count;

	struct ag_ec idle; /* free workers sleep here */
	struct ag_ec wait[WAIT_SLOTS]; /* group waiters sleep here */
} pool = {
	.lock = PTHREAD_MUTEX_INITIALIZER,
	.inj_lock = PTHREAD_MUTEX_INITIALIZER,
	.ext_lock = PTHREAD_MUTEX_INITIALIZER,
};

static AG_TLS struct ag_worker *self; /* this pool worker */
static AG_TLS struct ag_worker *mine; /* the deque this thread owns */
/* The family of the task this thread is running; NULL outside tasks. */
static AG_TLS struct ag_group *running_family;
static pthread_once_t ext_once = PTHREAD_ONCE_INIT;
static pthread_key_t ext_key;
static AG_TLS uint32_t rng_state;
/*
 * An outside thread's parallel work: region_depth counts every level
 * (ag_set_num_threads refuses to run inside one), busy_depth those that
 * use the pool (ag__pool_enter), whose outermost sets a busy flag.
 */
static AG_TLS int region_depth, busy_depth;
static AG_TLS struct ag_worker *region_slot; /* NULL: busy_unslotted */

static uint32_t rng_next(void)
{
	uint32_t x = rng_state;

	if (!x)
		x = (uint32_t)(uintptr_t)&rng_state | 1;
	x ^= x << 13;
	x ^= x >> 17;
	x ^= x << 5;
	rng_state = x;
	return x;
}

static struct ag_ec *wait_slot(const struct ag_group *g)
{
	uint64_t h = (uint64_t)(uintptr_t)g;

	h = (h >> 4) * 0x9e3779b97f4a7c15ull;
	return &pool.wait[h >> 58];
}

bool ag__pool_is_worker(void)
{
	return self != NULL;
}

int ag__pool_worker_id(void)
{
	return self ? self->id : -1;
}

void ag__group_init(struct ag_group *g)
{
	atomic_init(&g->pending, 0);
	g->family = running_family ? running_family : g;
}

static void task_run(struct ag_task *t)
{
	struct ag_group *g = t->group;
	struct ag_ec *ec = wait_slot(g);
	struct ag_group *outer = running_family;

	running_family = g->family;
	t->run(t);
	running_family = outer;
	/*
	 * Once pending reaches zero the owner may return and free g, so the
	 * wake-up touches only the wait slot, which lives forever.
	 */
	if (atomic_fetch_sub_explicit(&g->pending, 1, memory_order_seq_cst) ==
	    1)
		ag__ec_notify(ec, INT_MAX);
}

/* ---- injection queue: submissions from threads outside the pool ---- */

static void inj_push(struct ag_task *t)
{
	t->next = NULL;
	pthread_mutex_lock(&pool.inj_lock);
	if (pool.inj_tail)
		pool.inj_tail->next = t;
	else
		pool.inj_head = t;
	pool.inj_tail = t;
	/* seq_cst: the publication the eventcount argument needs. */
	atomic_fetch_add_explicit(&pool.inj_count, 1, memory_order_seq_cst);
	pthread_mutex_unlock(&pool.inj_lock);
}

/*
 * The oldest queued task that is wanted (any if want is NULL), or NULL.
 * Queued tasks' groups are pending, hence alive: their family may be read.
 */
static struct ag_task *inj_take(const struct ag_want *want)
{
	struct ag_task *t, *prev = NULL;

	if (!atomic_load_explicit(&pool.inj_count, memory_order_seq_cst))
		return NULL;
	pthread_mutex_lock(&pool.inj_lock);
	for (t = pool.inj_head; t; prev = t, t = t->next)
		if (ag__want_match(want, t->group, t->group->family))
			break;
	if (t) {
		if (prev)
			prev->next = t->next;
		else
			pool.inj_head = t->next;
		if (pool.inj_tail == t)
			pool.inj_tail = prev;
		atomic_fetch_sub_explicit(&pool.inj_count, 1,
					  memory_order_relaxed);
	}
	pthread_mutex_unlock(&pool.inj_lock);
	return t;
}

/* ---- finding work ---- */

/*
 * Steals a wanted top task (any if want is NULL) from some worker or some
 * outside thread's deque, starting at a random victim.
 */
static struct ag_task *steal(const struct ag_want *want)
{
	int nw = atomic_load_explicit(&pool.nworkers, memory_order_acquire);
	int n = nw + atomic_load_explicit(&pool.next_ext, memory_order_acquire);
	struct ag_task *t;
	int start;

	if (n <= 0)
		return NULL;
	start = (int)(rng_next() % (uint32_t)n);
	for (int i = 0; i < n; i++) {
		int j = (start + i) % n;
		struct ag_worker *v = j < nw ? pool.w[j] : pool.ext[j - nw];

		if (v == mine)
			continue;
		for (int tries = 0; tries < 8; tries++) {
			enum ag_steal r = ag__deque_steal(&v->dq, want, &t);

			if (r == AG_STEAL_OK)
				return t;
			if (r != AG_STEAL_ABORT)
				break;
		}
	}
	return NULL;
}

/* A free worker runs anything: its own newest task first. */
static struct ag_task *find_any(struct ag_worker *w)
{
	struct ag_task *t = ag__deque_pop(&w->dq, NULL);

	if (!t)
		t = inj_take(NULL);
	if (!t)
		t = steal(NULL);
	return t;
}

/* A waiter runs only tasks it wants (isolation: see ag__group_wait). */
static struct ag_task *find_group(const struct ag_want *want)
{
	struct ag_task *t = NULL;

	if (mine)
		t = ag__deque_pop(&mine->dq, want);
	if (!t)
		t = inj_take(want);
	if (!t)
		t = steal(want);
	return t;
}

static void spin_pause(void)
{
	for (int i = 0; i < SPIN_PAUSES; i++)
		cpu_relax();
}

static bool stopping(void)
{
	return atomic_load_explicit(&pool.stop, memory_order_seq_cst);
}

/* A free worker with nothing to do: poll a little, then sleep. */
static struct ag_task *idle_wait(struct ag_worker *w)
{
	struct ag_task *t;
	unsigned key;

	for (int i = 0; i < SPIN_ROUNDS; i++) {
		spin_pause();
		t = find_any(w);
		if (t || stopping())
			return t;
	}
	key = ag__ec_prepare(&pool.idle);
	t = find_any(w);
	if (t || stopping()) {
		ag__ec_cancel(&pool.idle);
		return t;
	}
	ag__ec_commit(&pool.idle, key);
	return NULL;
}

static void *worker_main(void *arg)
{
	struct ag_worker *w = arg;
	bool woken = false;
	char name[16];

	self = w;
	mine = w;
	snprintf(name, sizeof(name), "ag-worker-%d", w->id);
	pthread_setname_np(pthread_self(), name);
	for (;;) {
		struct ag_task *t = find_any(w);

		if (t && woken) {
			/*
			 * A burst of submits wakes one sleeper; each one
			 * that finds work wakes the next, so a burst that
			 * ended before we woke still reaches every thread.
			 */
			ag__ec_notify(&pool.idle, 1);
		}
		woken = false;
		if (!t) {
			/* Drain before leaving: nothing queued is lost. */
			if (stopping())
				break;
			t = idle_wait(w);
			woken = !t;
		}
		if (t)
			task_run(t);
	}
	self = NULL;
	mine = NULL;
	return NULL;
}

/* ---- groups ---- */

/* ---- deques of threads outside the pool ---- */

/* Thread exit: give the slot back if nothing is left in it. */
static void ext_release(void *arg)
{
	struct ag_worker *e = arg;

	if (e != mine)
		return; /* not ours any more (fork child) */
	mine = NULL;
	/*
	 * Tasks left behind (submitted, never waited for) stay stealable;
	 * the slot then stays claimed for good.
	 */
	if (ag__deque_maybe_nonempty(&e->dq))
		return;
	/* Release: the next owner sees this one's indices. */
	atomic_store_explicit(&e->claimed, 0, memory_order_release);
}

static void ext_key_init(void)
{
	pthread_key_create(&ext_key, ext_release);
}

/* A deque for this thread outside the pool, or NULL if none is free. */
static struct ag_worker *ext_claim(void)
{
	int n = atomic_load_explicit(&pool.next_ext, memory_order_acquire);
	struct ag_worker *e = NULL;

	pthread_once(&ext_once, ext_key_init);
	for (int i = 0; i < n; i++) {
		int zero = 0;

		if (atomic_compare_exchange_strong_explicit(
			    &pool.ext[i]->claimed, &zero, 1,
			    memory_order_acquire, memory_order_relaxed)) {
			e = pool.ext[i];
			goto out;
		}
	}
	pthread_mutex_lock(&pool.ext_lock);
	n = atomic_load_explicit(&pool.next_ext, memory_order_relaxed);
	if (n < MAX_EXT) {
		e = ag__aligned_alloc(64, (sizeof(*e) + 63) & ~(size_t)63);
		if (e) {
			memset(e, 0, sizeof(*e));
			if (ag__deque_init(&e->dq)) {
				ag__mfree(e);
				e = NULL;
			}
		}
		if (e) {
			e->id = -1;
			atomic_init(&e->claimed, 1);
			pool.ext[n] = e;
			/* Release: thieves that see n + 1 see the slot. */
			atomic_store_explicit(&pool.next_ext, n + 1,
					      memory_order_release);
		}
	}
	pthread_mutex_unlock(&pool.ext_lock);
	if (!e)
		return NULL;
out:
	pthread_setspecific(ext_key, e);
	mine = e;
	return e;
}

void ag__group_submit(struct ag_group *g, struct ag_task *t)
{
	struct ag_worker *d = mine;

	t->group = g;
	/*
	 * Relaxed: whoever finishes t acquired it through a deque or the
	 * queue, so the decrement follows this increment.
	 */
	atomic_fetch_add_explicit(&g->pending, 1, memory_order_relaxed);
	if (!self) {
		ag__pool_ensure();
		if (!d)
			d = ext_claim();
	}
	if (d) {
		if (ag__deque_push(&d->dq, t, g, g->family)) {
			/* Full and cannot grow: running it now is correct. */
			task_run(t);
			return;
		}
	} else {
		inj_push(t);
	}
	ag__ec_notify(&pool.idle, 1);
	ag__ec_notify(wait_slot(g), INT_MAX);
	if (g->family != g) /* its family's outermost waiter may help */
		ag__ec_notify(wait_slot(g->family), INT_MAX);
}

static bool group_done_sc(struct ag_group *g)
{
	return atomic_load_explicit(&g->pending, memory_order_seq_cst) == 0;
}

/* A waiter that found nothing it wants: poll a little, then sleep. */
static struct ag_task *group_park(struct ag_group *g,
				  const struct ag_want *want)
{
	struct ag_ec *ec = wait_slot(g);
	struct ag_task *t;
	unsigned key;

	for (int i = 0; i < SPIN_ROUNDS; i++) {
		spin_pause();
		if (ag__group_done(g))
			return NULL;
		t = find_group(want);
		if (t)
			return t;
	}
	key = ag__ec_prepare(ec);
	if (group_done_sc(g)) {
		ag__ec_cancel(ec);
		return NULL;
	}
	t = find_group(want);
	if (t) {
		ag__ec_cancel(ec);
		return t;
	}
	ag__ec_commit(ec, key);
	return NULL;
}

void ag__group_wait(struct ag_group *g)
{
	/*
	 * Outside any task, a waiter also takes the tasks of groups opened
	 * under g (parallel_for chunks of g's tasks, nested backward): it has
	 * nothing of its own on its stack that such a task could delay.  A
	 * waiter inside a task sticks to g, or it might pick up a long task
	 * of the family while its own task's caller waits for it.
	 */
	struct ag_want want = { g, running_family ? NULL : g->family };

	while (!ag__group_done(g)) {
		struct ag_task *t = find_group(&want);

		if (!t)
			t = group_park(g, &want);
		if (t)
			task_run(t);
	}
}

/* ---- lifecycle ---- */

static int online_cpus(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);

	if (n < 1)
		return 1;
	return n > AG_POOL_MAX_WORKERS + 1 ? AG_POOL_MAX_WORKERS + 1 : (int)n;
}

/* ag_set_num_threads(), else AG_NUM_THREADS, else the online CPUs. */
static int configured_threads(void)
{
	int n = atomic_load_explicit(&pool.requested, memory_order_relaxed);
	long long v;

	if (n > 0)
		return n;
	if (ag__env_int("AG_NUM_THREADS", 1, AG_POOL_MAX_WORKERS + 1, &v))
		return (int)v;
	return online_cpus();
}

static struct ag_worker *worker_slot(int i)
{
	struct ag_worker *w = pool.w[i];

	if (w)
		return w;
	w = ag__aligned_alloc(64, (sizeof(*w) + 63) & ~(size_t)63);
	if (!w)
		return NULL;
	memset(w, 0, sizeof(*w));
	if (ag__deque_init(&w->dq)) {
		ag__mfree(w);
		return NULL;
	}
	w->id = i;
	pool.w[i] = w;
	return w;
}

/* Under pool.lock. */
static void start_locked(int nworkers)
{
	static const int sync_signals[] = { SIGSEGV, SIGBUS,  SIGFPE, SIGILL,
					    SIGTRAP, SIGABRT, SIGSYS };
	pthread_attr_t attr;
	sigset_t mask, old;
	int i, n;

	for (n = 0; n < nworkers; n++)
		if (!worker_slot(n))
			break;
	atomic_store_explicit(&pool.stop, 0, memory_order_relaxed);
	atomic_store_explicit(&pool.nworkers, n, memory_order_release);
	/*
	 * Workers inherit a mask that keeps the user's asynchronous signals
	 * off them; faults still reach their handlers (sanitizers, crash
	 * reporters).
	 */
	sigfillset(&mask);
	for (i = 0; i < (int)(sizeof(sync_signals) / sizeof(int)); i++)
		sigdelset(&mask, sync_signals[i]);
	pthread_sigmask(SIG_SETMASK, &mask, &old);
	/*
	 * A fixed stack, not RLIMIT_STACK's: re-entrant backward nests
	 * group waits (depth 100 is tested) whatever ulimit -s says.
	 */
	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, WORKER_STACK);
	for (i = 0; i < n; i++)
		if (pthread_create(&pool.w[i]->thread, &attr, worker_main,
				   pool.w[i]))
			break;
	pthread_attr_destroy(&attr);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	/* Fewer threads than asked for is slower, not wrong. */
	pool.nstarted = i;
	if (i < n)
		atomic_store_explicit(&pool.nworkers, i, memory_order_release);
	atomic_store_explicit(&pool.running, 1, memory_order_release);
}

/* Under pool.lock: drains the queued work, then joins the workers. */
static void stop_locked(void)
{
	atomic_store_explicit(&pool.running, 0, memory_order_seq_cst);
	atomic_store_explicit(&pool.stop, 1, memory_order_seq_cst);
	ag__ec_wake_all(&pool.idle);
	for (int i = 0; i < pool.nstarted; i++)
		pthread_join(pool.w[i]->thread, NULL);
	pool.nstarted = 0;
	atomic_store_explicit(&pool.nworkers, 0, memory_order_release);
	atomic_store_explicit(&pool.stop, 0, memory_order_relaxed);
}

int ag__pool_ensure(void)
{
	/*
	 * A worker never takes the lock: a resize holding it may be joining
	 * this very thread.  seq_cst: the load follows ag__pool_enter()'s
	 * store in the order ag_set_num_threads() reasons about.
	 */
	if (self || atomic_load_explicit(&pool.running, memory_order_seq_cst))
		return atomic_load_explicit(&pool.nworkers,
					    memory_order_relaxed) +
		       1;
	pthread_mutex_lock(&pool.lock);
	if (!atomic_load_explicit(&pool.running, memory_order_relaxed))
		start_locked(configured_threads() - 1);
	pthread_mutex_unlock(&pool.lock);
	ag__trace_env();
	return atomic_load_explicit(&pool.nworkers, memory_order_relaxed) + 1;
}

void ag__pool_enter(void)
{
	struct ag_worker *e;

	if (self)
		return; /* a worker's task is inside its submitter's region */
	region_depth++;
	if (busy_depth++)
		return;
	atomic_fetch_add_explicit(&pool.outside_active, 1,
				  memory_order_relaxed);
	e = mine ? mine : ext_claim();
	region_slot = e;
	/*
	 * seq_cst: before this thread's first look at pool.running in the
	 * region (ag__pool_ensure), so a resize that stops the pool after
	 * that look sees this flag (see ag_set_num_threads).
	 */
	if (e)
		atomic_store_explicit(&e->busy, 1, memory_order_seq_cst);
	else
		atomic_fetch_add_explicit(&pool.busy_unslotted, 1,
					  memory_order_seq_cst);
}

void ag__pool_leave(void)
{
	if (self || !busy_depth)
		return;
	region_depth--;
	if (--busy_depth)
		return;
	/* Release: the region's tasks are done before a resize sees 0. */
	if (region_slot)
		atomic_store_explicit(&region_slot->busy, 0,
				      memory_order_release);
	else
		atomic_fetch_sub_explicit(&pool.busy_unslotted, 1,
					  memory_order_release);
	region_slot = NULL;
	atomic_fetch_sub_explicit(&pool.outside_active, 1,
				  memory_order_relaxed);
}

/* Some thread is inside a parallel region (seq_cst loads). */
static bool pool_busy(void)
{
	int n = atomic_load_explicit(&pool.next_ext, memory_order_acquire);

	if (atomic_load_explicit(&pool.busy_unslotted, memory_order_seq_cst))
		return true;
	for (int i = 0; i < n; i++)
		if (atomic_load_explicit(&pool.ext[i]->busy,
					 memory_order_seq_cst))
			return true;
	return false;
}

/*
 * A resize stops the workers and joins them, so it must not run while
 * anyone uses them: a worker inside a task may be waiting for work that a
 * thread outside the pool holds, and that thread may be about to take
 * pool.lock (issue 12).  So it goes ahead only when no thread is inside a
 * parallel region (ag__pool_enter), and otherwise returns AG_EBUSY rather
 * than wait: with request threads running backward all the time, "until
 * idle" could be never.
 *
 * Why no region slips past the check: a region stores its flag, then
 * loads pool.running; the resize stores running = 0, then loads the flags;
 * all seq_cst.  If the region read running == 1 (and went ahead without
 * the lock), its store precedes the resize's loads, which see it.  If it
 * read 0, it waits for pool.lock in ag__pool_ensure before its first
 * submit, and the workers being joined hold nothing of it.
 */
int ag_set_num_threads(int n)
{
	int rc = 0;

	if (n < 0 || n > AG_POOL_MAX_WORKERS + 1)
		return ag__err(AG_EINVAL,
			       "ag_set_num_threads: %d threads is out of range "
			       "0..%d (0 means the online CPUs)",
			       n, AG_POOL_MAX_WORKERS + 1);
	if (self || region_depth || running_family)
		return ag__err(
			AG_EINVAL,
			"ag_set_num_threads: called inside parallel work (a pool task, a backward or an ag_parallel_for on this thread), where it could only wait for itself; resize before or between parallel calls");
	if (!n)
		n = online_cpus();
	pthread_mutex_lock(&pool.lock);
	if (atomic_load_explicit(&pool.running, memory_order_relaxed) &&
	    pool.nstarted != n - 1) {
		atomic_store_explicit(&pool.running, 0, memory_order_seq_cst);
		if (pool_busy()) {
			atomic_store_explicit(&pool.running, 1,
					      memory_order_release);
			rc = ag__err(
				AG_EBUSY,
				"ag_set_num_threads: the pool is busy: another thread is running a backward or an ag_parallel_for; the size stays %d threads (retry when no parallel work runs)",
				pool.nstarted + 1);
			goto out;
		}
		stop_locked(); /* the new size starts on next use */
	}
	atomic_store_explicit(&pool.requested, n, memory_order_relaxed);
out:
	pthread_mutex_unlock(&pool.lock);
	return rc;
}

int ag_get_num_threads(void)
{
	if (self || atomic_load_explicit(&pool.running, memory_order_acquire))
		return atomic_load_explicit(&pool.nworkers,
					    memory_order_relaxed) +
		       1;
	return configured_threads();
}

/*
 * The child of fork() has only the forking thread: forget the parent's
 * workers (their memory was copied, their threads were not) and let the
 * next use start a fresh pool.  Nothing here may read state another parent
 * thread was in the middle of changing.
 */
static void atfork_child(void)
{
	pthread_mutex_init(&pool.lock, NULL);
	pthread_mutex_init(&pool.inj_lock, NULL);
	pool.inj_head = NULL;
	pool.inj_tail = NULL;
	atomic_store_explicit(&pool.inj_count, 0, memory_order_relaxed);
	atomic_store_explicit(&pool.running, 0, memory_order_relaxed);
	atomic_store_explicit(&pool.stop, 0, memory_order_relaxed);
	atomic_store_explicit(&pool.nworkers, 0, memory_order_relaxed);
	pool.nstarted = 0;
	for (int i = 0; i < AG_POOL_MAX_WORKERS; i++)
		if (pool.w[i])
			ag__deque_reset(&pool.w[i]->dq);
	pthread_mutex_init(&pool.ext_lock, NULL);
	for (int i = 0; i < MAX_EXT; i++) {
		if (!pool.ext[i])
			continue;
		ag__deque_reset(&pool.ext[i]->dq);
		atomic_store_explicit(&pool.ext[i]->claimed, 0,
				      memory_order_relaxed);
		atomic_store_explicit(&pool.ext[i]->busy, 0,
				      memory_order_relaxed);
	}
	/* Regions of the parent's threads ended with them. */
	atomic_store_explicit(&pool.busy_unslotted, 0, memory_order_relaxed);
	atomic_store_explicit(&pool.outside_active, 0, memory_order_relaxed);
	ag__scope_atfork_child();
	region_depth = 0;
	busy_depth = 0;
	region_slot = NULL;
	if (mine && mine->id < 0)
		pthread_setspecific(ext_key, NULL);
	mine = NULL;
	ag__ec_init(&pool.idle);
	for (int i = 0; i < WAIT_SLOTS; i++)
		ag__ec_init(&pool.wait[i]);
	self = NULL;
	ag__trace_atfork_child();
}

__attribute__((constructor)) static void pool_init(void)
{
	pthread_atfork(NULL, NULL, atfork_child);
}

/*
 * At exit (or dlclose), stop the workers so none runs library code that is
 * going away.  Parked workers leave at once; one still busy with a task of
 * a user thread that outlives main() is waited for briefly, then left to
 * the process's end rather than hanging exit().
 */
__attribute__((destructor)) static void pool_fini(void)
{
	struct timespec dl;

	if (self || pthread_mutex_trylock(&pool.lock))
		goto out;
	if (atomic_load_explicit(&pool.running, memory_order_relaxed)) {
		atomic_store_explicit(&pool.running, 0, memory_order_seq_cst);
		atomic_store_explicit(&pool.stop, 1, memory_order_seq_cst);
		ag__ec_wake_all(&pool.idle);
		clock_gettime(CLOCK_REALTIME, &dl);
		dl.tv_nsec += EXIT_JOIN_NS;
		if (dl.tv_nsec >= 1000000000L) {
			dl.tv_sec++;
			dl.tv_nsec -= 1000000000L;
		}
		for (int i = 0; i < pool.nstarted; i++)
			if (pthread_timedjoin_np(pool.w[i]->thread, NULL, &dl))
				pthread_detach(pool.w[i]->thread);
		pool.nstarted = 0;
	}
	pthread_mutex_unlock(&pool.lock);
out:
	ag__trace_fini();
}

/* ---- ag_parallel_for ---- */

struct pf_ctx {
	void (*fn)(int64_t begin, int64_t end, void *arg);
	void *arg;
	int64_t n;
	int64_t chunk;
	struct ag_group group;
	struct pf_task *tasks;
};

struct pf_task {
	struct ag_task task;
	struct pf_ctx *ctx;
	int64_t c0, c1; /* chunk indices [c0, c1) */
};

static void pf_call(struct pf_ctx *c, int64_t begin, int64_t end)
{
	uint64_t t0;

	if (!ag__trace_on()) {
		c->fn(begin, end, c->arg);
		return;
	}
	t0 = ag__trace_now();
	c->fn(begin, end, c->arg);
	ag__trace_slice_range("parallel_for", t0, ag__trace_now(), begin, end);
}

static void pf_run(struct ag_task *t);

/*
 * Lazy binary splitting: hand off the upper half of the range and keep the
 * lower, until one chunk is left.  Thieves take from the top of a deque,
 * so they get the largest pieces; the owner continues next to the chunk it
 * just ran.  The task for [mid, c1) lives in tasks[mid]: starts of handed
 * off ranges are distinct, so slots are never shared.
 */
static void pf_split(struct pf_ctx *c, int64_t c0, int64_t c1)
{
	int64_t begin;

	while (c1 - c0 > 1) {
		int64_t mid = c0 + (c1 - c0) / 2;
		struct pf_task *s = &c->tasks[mid];

		ag__task_init(&s->task, pf_run);
		s->ctx = c;
		s->c0 = mid;
		s->c1 = c1;
		ag__group_submit(&c->group, &s->task);
		c1 = mid;
	}
	begin = c0 * c->chunk;
	pf_call(c, begin, c->n - begin < c->chunk ? c->n : begin + c->chunk);
}

static void pf_run(struct ag_task *t)
{
	struct pf_task *s = ag_container_of(t, struct pf_task, task);

	pf_split(s->ctx, s->c0, s->c1);
}

static int64_t div_up(int64_t a, int64_t b)
{
	return a / b + (a % b != 0);
}

int ag_parallel_for(int64_t n, int64_t grain,
		    void (*fn)(int64_t begin, int64_t end, void *arg),
		    void *arg)
{
	struct pf_task stack_tasks[PF_STACK_CHUNKS];
	struct pf_ctx c = { .fn = fn, .arg = arg, .n = n };
	int64_t nchunks;
	int nt;

	if (!fn)
		return ag__err(AG_EINVAL, "ag_parallel_for: fn is NULL");
	if (n < 0)
		return ag__err(AG_EINVAL, "ag_parallel_for: n is %lld",
			       (long long)n);
	if (grain < 1)
		grain = 1;
	if (n <= grain)
		goto serial;
	ag__pool_enter();
	nt = ag__pool_ensure();
	/*
	 * When as many threads from outside the pool are in parallel regions
	 * as the pool has threads (a service's request threads), every core
	 * is busy with one of them already: splitting would only make each
	 * wait for chunks that a worker, competing for the same cores, runs
	 * late (ag-bench --workload serve: at 64 request threads, batch 32
	 * fell to half the throughput of 2).  Run inline instead.  Threads
	 * with a scope open count too, in a parallel call at this instant or
	 * not: a request thread between its GEMMs still holds its core (at 2
	 * request threads, batch 32 gained a sixth and its p99 fell 5x).
	 */
	if (nt < 2 ||
	    (!self && (atomic_load_explicit(&pool.outside_active,
					    memory_order_relaxed) >= nt ||
		       atomic_load_explicit(&ag__scoped_threads,
					    memory_order_relaxed) >= nt))) {
		ag__pool_leave();
		goto serial;
	}

	c.chunk = div_up(n, (int64_t)nt * PF_CHUNKS_PER_THREAD);
	if (c.chunk < grain)
		c.chunk = grain;
	nchunks = div_up(n, c.chunk);
	if (nchunks > PF_MAX_CHUNKS) {
		c.chunk = div_up(n, PF_MAX_CHUNKS);
		nchunks = div_up(n, c.chunk);
	}
	c.tasks = stack_tasks;
	if (nchunks > PF_STACK_CHUNKS) {
		int before = ag_errcode();

		c.tasks = ag__malloc((size_t)nchunks * sizeof(*c.tasks));
		if (!c.tasks) {
			ag__err_recovered(before);
			ag__pool_leave();
			goto serial; /* slower, still correct */
		}
	}
	ag__group_init(&c.group);
	pf_split(&c, 0, nchunks);
	ag__group_wait(&c.group);
	ag__pool_leave();
	if (c.tasks != stack_tasks)
		ag__mfree(c.tasks);
	return 0;

serial:
	if (n) {
		region_depth++; /* fn may not resize the pool either */
		pf_call(&c, 0, n);
		region_depth--;
	}
	return 0;
}

int64_t ag__parallel_threshold(void)
{
	static atomic_llong cached;
	long long v = atomic_load_explicit(&cached, memory_order_relaxed);

	if (v)
		return v;
	if (!ag__env_int("AG_PAR_THRESHOLD", 1, LLONG_MAX, &v))
		v = AG_PARALLEL_THRESHOLD_DEFAULT;
	atomic_store_explicit(&cached, v, memory_order_relaxed);
	return v;
}
