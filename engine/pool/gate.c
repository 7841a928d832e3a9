// SPDX-License-Identifier: MIT
/*
 * Admission gates (ag_gate_*, include/ag/pool.h): at most `slots` request
 * threads run at once, the others wait in arrival order.
 *
 * Why a library piece: with more busy request threads than cores, the
 * kernel runs them in turn and preempts them wherever their time slice
 * ends, usually mid-request; such a request then waits for every other
 * thread's slice (docs/serving.md).  The gate keeps only as many threads
 * runnable as it has slots and moves a place from one thread to the next
 * at request boundaries: on leave, or on yield once the holder has used
 * its quantum.
 *
 * A place is handed straight to the oldest waiter (the count of free
 * places does not change), so a thread that arrives later cannot take it
 * first.  A waiter sleeps on a pipe of its own thread where it can: a
 * pipe write is a synchronous wake-up, which the scheduler answers by
 * running the waiter on the waker's CPU as the waker goes to sleep; a
 * futex wake (a condition variable) is not, and on a 2-CPU VM the woken
 * thread often went to the other, busy CPU while this one idled (30% of
 * the throughput of 64 threads, against 13% with a pipe; docs/serving.md).
 * A thread that cannot get a pipe (out of descriptors) waits on a
 * condition variable instead.
 *
 * Places have identities, and each keeps the big-block cache its holders
 * allocate from (alloc.c, ag__big_cache): a thread that gets a place after
 * waiting a whole round has its own buffers cold, while the place's were
 * freed by the last holder a moment ago, usually on the same CPU.
 *
 * fork(): every gate is on a list so that the child can reset them (its
 * only thread is the forking one): the queue was the parent's other
 * threads, so it empties; their places come free; the caches of places
 * they held may have been mid-change and are dropped, not freed.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <unistd.h>

#include <ag/error.h>
#include <ag/pool.h>

#include "internal.h"
#include "pool.h"

#define GATE_MAX_SLOTS 65536

struct gate_waiter {
	struct gate_waiter *next;
	int fd[2]; /* the thread's pipe; fd[0] -1: cond below instead */
	int place; /* handed over with go */
	bool go; /* under the gate's lock, for cond */
	pthread_cond_t cond;
};

struct ag_gate {
	struct ag__list link; /* on gates, under gates_lock */
	pthread_mutex_t lock;
	int slots;
	int nfree; /* places not held and not being handed over... */
	int *free_places; /* ...and which: [slots] */
	struct ag__big_cache **cache; /* per place, made by its first holder */
	int64_t quantum_ns;
	struct gate_waiter *head, **tail;
	atomic_int waiting; /* written under lock; read by yield without */
};

/* Per thread: the place it holds, since when, and its wake-up pipe. */
struct gate_thread {
	struct ag_gate *held;
	int place;
	int64_t since;
	int fd[2]; /* -1: not made yet; -2: could not be made */
	bool keyed;
};

static AG_TLS struct gate_thread gate_tls = { .fd = { -1, -1 } };
static pthread_key_t gate_key;
static pthread_once_t gate_once = PTHREAD_ONCE_INIT;

/* Every gate, for fork; the order is gates_lock, then a gate's lock. */
static struct ag__list gates = AG_LIST_INIT(gates);
static pthread_mutex_t gates_lock = PTHREAD_MUTEX_INITIALIZER;

static int64_t now_ns(void)
{
	return (int64_t)ag__trace_now(); /* pool.h: CLOCK_MONOTONIC, ns */
}

/*
 * At thread exit: a place still held goes to the next waiter (a thread
 * that dies holding one would otherwise shrink the gate for good), and
 * the pipe is closed.
 */
static void gate_thread_exit(void *arg)
{
	struct gate_thread *t = arg;

	if (t->held)
		ag_gate_leave(t->held);
	for (int i = 0; i < 2; i++) {
		if (t->fd[i] >= 0)
			close(t->fd[i]);
		t->fd[i] = -1;
	}
}

static void gate_key_make(void)
{
	pthread_key_create(&gate_key, gate_thread_exit);
}

/* w waits on the thread's pipe, made on first need, or on a condvar. */
static void waiter_init(struct gate_waiter *w, struct gate_thread *t)
{
	if (t->fd[0] == -1 && pipe2(t->fd, O_CLOEXEC))
		t->fd[0] = t->fd[1] = -2;
	w->fd[0] = t->fd[0] >= 0 ? t->fd[0] : -1;
	w->fd[1] = t->fd[1];
	if (w->fd[0] < 0)
		pthread_cond_init(&w->cond, NULL);
}

/* The key's destructor runs only for a thread that set a value. */
static void thread_register(struct gate_thread *t)
{
	if (t->keyed)
		return;
	pthread_once(&gate_once, gate_key_make);
	pthread_setspecific(gate_key, t);
	t->keyed = true;
}

/* Under g->lock: w joins the queue's tail. */
static void enqueue(struct ag_gate *g, struct gate_waiter *w)
{
	w->next = NULL;
	w->go = false;
	*g->tail = w;
	g->tail = &w->next;
	atomic_fetch_add_explicit(&g->waiting, 1, memory_order_relaxed);
}

/*
 * Under g->lock: a place is let go.  It passes to the oldest waiter or
 * becomes free.  A waiter on a pipe is returned, to be woken by wake()
 * once the lock is dropped: woken under it, it could run on this CPU at
 * once, with this thread preempted holding the lock that every other
 * hand-off needs.  (Its frame lives until it has read the byte.)
 */
static struct gate_waiter *release(struct ag_gate *g, int place)
{
	struct gate_waiter *w = g->head;

	if (!w) {
		g->free_places[g->nfree++] = place;
		return NULL;
	}
	g->head = w->next;
	if (!g->head)
		g->tail = &g->head;
	atomic_fetch_sub_explicit(&g->waiting, 1, memory_order_relaxed);
	w->place = place;
	w->go = true;
	if (w->fd[0] >= 0)
		return w;
	pthread_cond_signal(&w->cond);
	return NULL;
}

static void wake(struct gate_waiter *w)
{
	char c = 0;

	while (w && write(w->fd[1], &c, 1) < 0 && errno == EINTR)
		;
}

/*
 * Under g->lock, which it drops: the calling thread queues behind the
 * others, wakes to (the place released into) w0 first, and sleeps until a
 * place is handed to it; returns that place.
 */
static int wait_turn(struct ag_gate *g, struct gate_thread *t,
		     struct gate_waiter *w0)
{
	struct gate_waiter w;
	char c;

	waiter_init(&w, t);
	enqueue(g, &w);
	pthread_mutex_unlock(&g->lock);
	wake(w0);
	if (w.fd[0] >= 0) {
		while (read(w.fd[0], &c, 1) != 1)
			; /* EINTR */
		return w.place;
	}
	pthread_mutex_lock(&g->lock);
	while (!w.go)
		pthread_cond_wait(&w.cond, &g->lock);
	pthread_mutex_unlock(&g->lock);
	pthread_cond_destroy(&w.cond);
	return w.place;
}

struct ag_gate *ag_gate_new(int slots, int64_t quantum_us)
{
	struct ag_gate *g;

	if (slots == 0) {
		long n = sysconf(_SC_NPROCESSORS_ONLN);

		slots = n > 0 && n < GATE_MAX_SLOTS ? (int)n : 1;
	}
	if (slots < 0 || slots > GATE_MAX_SLOTS) {
		ag__err(AG_EINVAL, "ag_gate_new: slots %d not in [0, %d]",
			slots, GATE_MAX_SLOTS);
		return NULL;
	}
	if (quantum_us < 0 || quantum_us > INT64_MAX / 1000) {
		ag__err(AG_EINVAL, "ag_gate_new: quantum_us %lld out of range",
			(long long)quantum_us);
		return NULL;
	}
	g = ag__calloc(1, sizeof(*g));
	if (!g)
		return NULL; /* AG_ENOMEM set */
	g->free_places = ag__calloc((size_t)slots, sizeof(int));
	g->cache = ag__calloc((size_t)slots, sizeof(*g->cache));
	if (!g->free_places || !g->cache) {
		ag__mfree(g->free_places);
		ag__mfree(g->cache);
		ag__mfree(g);
		return NULL;
	}
	pthread_mutex_init(&g->lock, NULL);
	g->slots = slots;
	g->nfree = slots;
	for (int i = 0; i < slots; i++)
		g->free_places[i] = slots - 1 - i; /* place 0 first */
	g->quantum_ns = quantum_us * 1000;
	g->tail = &g->head;
	atomic_init(&g->waiting, 0);
	pthread_mutex_lock(&gates_lock);
	ag__list_add(&g->link, &gates);
	pthread_mutex_unlock(&gates_lock);
	return g;
}

int ag_gate_free(struct ag_gate *g)
{
	bool busy;

	if (!g)
		return 0;
	pthread_mutex_lock(&gates_lock);
	pthread_mutex_lock(&g->lock);
	busy = g->nfree != g->slots || g->head;
	pthread_mutex_unlock(&g->lock);
	if (!busy)
		ag__list_del(&g->link);
	pthread_mutex_unlock(&gates_lock);
	if (busy)
		return ag__err(AG_EBUSY,
			       "ag_gate_free: %d of %d places held, %d waiting",
			       g->slots - g->nfree, g->slots,
			       atomic_load_explicit(&g->waiting,
						    memory_order_relaxed));
	pthread_mutex_destroy(&g->lock);
	for (int i = 0; i < g->slots; i++)
		ag__big_cache_free(g->cache[i]);
	ag__mfree(g->cache);
	ag__mfree(g->free_places);
	ag__mfree(g);
	return 0;
}

/* The calling thread now holds place of g. */
static void take(struct ag_gate *g, struct gate_thread *t, int place)
{
	/* the place is ours alone: its cache needs no lock */
	if (!g->cache[place])
		g->cache[place] = ag__big_cache_new();
	ag__big_cache_bind(g->cache[place]);
	t->held = g;
	t->place = place;
	t->since = now_ns();
}

/* The calling thread is about to let its place go. */
static void untake(struct gate_thread *t)
{
	ag__big_cache_bind(NULL);
	t->held = NULL;
}

int ag_gate_enter(struct ag_gate *g)
{
	struct gate_thread *t = &gate_tls;
	int place;

	if (!g)
		return ag__err(AG_EINVAL, "ag_gate_enter: gate is NULL");
	if (t->held)
		return ag__err(AG_EINVAL,
			       "ag_gate_enter: this thread holds a place at a "
			       "gate already (ag_gate_leave it first)");
	thread_register(t);
	pthread_mutex_lock(&g->lock);
	if (g->nfree > 0 && !g->head) {
		place = g->free_places[--g->nfree];
		pthread_mutex_unlock(&g->lock);
	} else {
		place = wait_turn(g, t, NULL);
	}
	take(g, t, place);
	return 0;
}

/* Checks that the calling thread holds a place at g. */
static int holder_check(struct ag_gate *g, const char *fn)
{
	if (!g)
		return ag__err(AG_EINVAL, "%s: gate is NULL", fn);
	if (gate_tls.held != g)
		return ag__err(AG_EINVAL,
			       "%s: this thread holds no place at this gate",
			       fn);
	return 0;
}

int ag_gate_leave(struct ag_gate *g)
{
	struct gate_waiter *w;
	int rc = holder_check(g, "ag_gate_leave");

	if (rc)
		return rc;
	untake(&gate_tls);
	pthread_mutex_lock(&g->lock);
	w = release(g, gate_tls.place);
	pthread_mutex_unlock(&g->lock);
	wake(w);
	return 0;
}

int ag_gate_yield(struct ag_gate *g)
{
	struct gate_thread *t = &gate_tls;
	struct gate_waiter *w;
	int64_t now;
	int rc = holder_check(g, "ag_gate_yield");

	if (rc)
		return rc;
	if (!atomic_load_explicit(&g->waiting, memory_order_relaxed))
		return 0;
	now = now_ns();
	if (now - t->since < g->quantum_ns)
		return 0;
	pthread_mutex_lock(&g->lock);
	if (!g->head) { /* the waiter took a place that came free */
		pthread_mutex_unlock(&g->lock);
		t->since = now;
		return 0;
	}
	untake(t);
	w = release(g, t->place); /* our place goes to the head... */
	take(g, t, wait_turn(g, t, w)); /* ...and we queue behind the rest */
	return 0;
}

int ag_gate_waiting(const struct ag_gate *g)
{
	return g ? atomic_load_explicit(&g->waiting, memory_order_relaxed) : 0;
}

static void gates_fork_prepare(void)
{
	struct ag__list *pos;

	pthread_mutex_lock(&gates_lock);
	ag__list_for_each(pos, &gates) pthread_mutex_lock(
		&ag__list_entry(pos, struct ag_gate, link)->lock);
}

static void gates_fork_parent(void)
{
	struct ag__list *pos;

	ag__list_for_each(pos, &gates) pthread_mutex_unlock(
		&ag__list_entry(pos, struct ag_gate, link)->lock);
	pthread_mutex_unlock(&gates_lock);
}

/*
 * In the child, g as its one thread finds it: nobody waits, and every
 * place but its own (if it holds one) is free.  The caches of places the
 * parent's other threads held are dropped (they may have been mid-change).
 */
static void gate_fork_reset(struct ag_gate *g)
{
	int mine = gate_tls.held == g ? gate_tls.place : -1;
	bool *keep = ag__calloc((size_t)g->slots, sizeof(bool));

	for (int i = 0; keep && i < g->nfree; i++)
		keep[g->free_places[i]] = true;
	g->nfree = 0;
	for (int p = g->slots - 1; p >= 0; p--) {
		if (p != mine && !(keep && keep[p]))
			g->cache[p] = NULL;
		if (p != mine)
			g->free_places[g->nfree++] = p;
	}
	ag__mfree(keep);
	g->head = NULL;
	g->tail = &g->head;
	atomic_store_explicit(&g->waiting, 0, memory_order_relaxed);
}

static void gates_fork_child(void)
{
	struct ag__list *pos;

	ag__list_for_each(pos, &gates)
	{
		struct ag_gate *g = ag__list_entry(pos, struct ag_gate, link);

		gate_fork_reset(g);
		pthread_mutex_unlock(&g->lock);
	}
	pthread_mutex_unlock(&gates_lock);
}

__attribute__((constructor)) static void gates_init(void)
{
	pthread_atfork(gates_fork_prepare, gates_fork_parent, gates_fork_child);
}
