// SPDX-License-Identifier: MIT
/*
 * Chrome trace-event JSON of what ran where.  Each thread appends to its own
 * buffer under its own mutex, which only ag_trace_stop() ever contends, so
 * there is no global lock on the hot path; while tracing is off the cost is
 * the relaxed load in ag__trace_on().
 *
 * Buffers are lists of fixed chunks from a shared free list, which
 * ag_trace_start() fills with written (page-faulted) chunks for every
 * thread of the pool: on this kind of machine a fresh page costs 5-15 us,
 * and a buffer allocated in the middle of the traced work showed up as
 * 0.2-0.8 ms gaps in every lane.  What is still allocated during a trace
 * (a thread beyond the reserve, a very long trace) appears as a slice
 * named "trace buffer".
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdio_ext.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <ag/error.h>
#include <ag/pool.h>
#include <ag/trace.h>

#include "internal.h"
#include "pool.h"
#include "lib/env.h"

struct trace_ev {
	const char *name;
	uint64_t t0, t1;
	int64_t begin, end; /* end < 0: no args */
};

#define TRACE_STALL "trace buffer"
#define CHUNK_EVENTS 1024 /* 40 KiB */
/* Chunks ag_trace_start() makes ready per thread of the pool. */
#define CHUNKS_PER_THREAD 4

struct trace_chunk {
	struct trace_chunk *next;
	size_t n;
	struct trace_ev ev[CHUNK_EVENTS];
};

struct trace_buf {
	pthread_mutex_t lock; /* the owner thread and ag_trace_stop() */
	struct trace_chunk *head, *tail; /* head: the oldest events */
	unsigned session; /* events belong to this session */
	bool dead; /* the thread has exited */
	int tid;
	char lane[24];
	struct trace_buf *next; /* under tr.lock */
};

atomic_int ag__trace_enabled;

static struct {
	pthread_mutex_t lock; /* the buffer list, start and stop */
	struct trace_buf *bufs;
	FILE *f;
	uint64_t t_start;
	atomic_uint session;
	int next_thread;
	bool from_env;
	/* Free chunks; a leaf lock, taken under any other. */
	pthread_mutex_t chunk_lock;
	struct trace_chunk *free_chunks;
	size_t nfree;
} tr = { .lock = PTHREAD_MUTEX_INITIALIZER,
	 .chunk_lock = PTHREAD_MUTEX_INITIALIZER };

static pthread_once_t key_once = PTHREAD_ONCE_INIT;
static pthread_key_t buf_key;
static _Thread_local struct trace_buf *my_buf;

uint64_t ag__trace_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Thread exit: the buffer outlives the thread until the next stop. */
static void buf_release(void *p)
{
	struct trace_buf *b = p;

	pthread_mutex_lock(&b->lock);
	b->dead = true;
	pthread_mutex_unlock(&b->lock);
	my_buf = NULL;
}

static void make_key(void)
{
	pthread_key_create(&buf_key, buf_release);
}

static struct trace_buf *buf_register(void)
{
	struct trace_buf *b = ag__calloc(1, sizeof(*b));
	int wid = ag__pool_worker_id();

	if (!b)
		return NULL;
	pthread_mutex_init(&b->lock, NULL);
	pthread_once(&key_once, make_key);
	pthread_mutex_lock(&tr.lock);
	if (wid >= 0) {
		b->tid = wid + 1;
		snprintf(b->lane, sizeof(b->lane), "worker %d", wid);
	} else {
		b->tid = 1000 + tr.next_thread++;
		snprintf(b->lane, sizeof(b->lane), "thread %d", b->tid - 1000);
	}
	b->next = tr.bufs;
	tr.bufs = b;
	pthread_mutex_unlock(&tr.lock);
	pthread_setspecific(buf_key, b);
	my_buf = b;
	return b;
}

/* A new chunk, written so that its pages fault in now, or NULL. */
static struct trace_chunk *chunk_new(void)
{
	struct trace_chunk *c = ag__malloc(sizeof(*c));

	if (c)
		memset(c, 0, sizeof(*c));
	return c;
}

/* A written chunk, from the free list or else (slowly) new. */
static struct trace_chunk *chunk_get(bool *stalled)
{
	struct trace_chunk *c;

	pthread_mutex_lock(&tr.chunk_lock);
	c = tr.free_chunks;
	if (c) {
		tr.free_chunks = c->next;
		tr.nfree--;
	}
	pthread_mutex_unlock(&tr.chunk_lock);
	if (!c) {
		*stalled = true;
		c = chunk_new();
		if (!c)
			return NULL;
	}
	c->next = NULL;
	c->n = 0;
	return c;
}

/* Gives a list of chunks back to the free list. */
static void chunks_put(struct trace_chunk *c)
{
	struct trace_chunk *last = c;
	size_t n = 1;

	if (!c)
		return;
	while (last->next) {
		last = last->next;
		n++;
	}
	pthread_mutex_lock(&tr.chunk_lock);
	last->next = tr.free_chunks;
	tr.free_chunks = c;
	tr.nfree += n;
	pthread_mutex_unlock(&tr.chunk_lock);
}

static void chunks_free(struct trace_chunk *c)
{
	while (c) {
		struct trace_chunk *next = c->next;

		ag__mfree(c);
		c = next;
	}
}

/* Under b->lock: drops b's events, keeping no chunk. */
static void buf_clear(struct trace_buf *b)
{
	chunks_put(b->head);
	b->head = b->tail = NULL;
}

/* Under b->lock: room for two more events (a slice and a stall slice). */
static bool buf_room(struct trace_buf *b, bool *stalled)
{
	struct trace_chunk *c;

	if (b->tail && b->tail->n + 2 <= CHUNK_EVENTS)
		return true;
	c = chunk_get(stalled);
	if (!c)
		return false;
	if (b->tail)
		b->tail->next = c;
	else
		b->head = c;
	b->tail = c;
	return true;
}

static void trace_add(const char *name, uint64_t t0, uint64_t t1, int64_t begin,
		      int64_t end)
{
	struct trace_buf *b = my_buf;
	bool stalled = false;
	struct trace_chunk *c;
	int before = ag_errcode();
	unsigned s;

	if (!b) {
		stalled = true;
		b = buf_register();
		if (!b) {
			ag__err_recovered(before); /* work goes on */
			return;
		}
	}
	pthread_mutex_lock(&b->lock);
	s = atomic_load_explicit(&tr.session, memory_order_relaxed);
	if (b->session != s) {
		/* Left over from an earlier session: drop it. */
		b->session = s;
		buf_clear(b);
	}
	if (!buf_room(b, &stalled)) {
		ag__err_recovered(before);
		goto out; /* the trace loses a slice; work goes on */
	}
	c = b->tail;
	c->ev[c->n++] = (struct trace_ev){ name, t0, t1, begin, end };
	/*
	 * Allocating took time the traced work did not spend (from t1, when
	 * the slice ended and we were called): show it as what it is rather
	 * than as a gap.
	 */
	if (stalled)
		c->ev[c->n++] = (struct trace_ev){ TRACE_STALL, t1,
						   ag__trace_now(), -1, -1 };
out:
	pthread_mutex_unlock(&b->lock);
}

void ag__trace_slice(const char *name, uint64_t t0_ns, uint64_t t1_ns)
{
	if (ag__trace_on())
		trace_add(name, t0_ns, t1_ns, -1, -1);
}

void ag__trace_slice_range(const char *name, uint64_t t0_ns, uint64_t t1_ns,
			   int64_t begin, int64_t end)
{
	if (ag__trace_on())
		trace_add(name, t0_ns, t1_ns, begin, end);
}

/*
 * Before a trace: written chunks enough for every pool thread and a caller
 * to record CHUNKS_PER_THREAD x 1024 slices without allocating.  Kept
 * across traces.  Short of memory, the trace allocates as it goes.
 */
static void reserve_chunks(void)
{
	size_t want = (size_t)(ag_get_num_threads() + 1) * CHUNKS_PER_THREAD;

	for (;;) {
		struct trace_chunk *c;

		pthread_mutex_lock(&tr.chunk_lock);
		if (tr.nfree >= want) {
			pthread_mutex_unlock(&tr.chunk_lock);
			return;
		}
		pthread_mutex_unlock(&tr.chunk_lock);
		c = chunk_new();
		if (!c)
			return;
		chunks_put(c);
	}
}

/* Under tr.lock. */
static int start_locked(const char *path, bool from_env)
{
	FILE *f;

	if (atomic_load_explicit(&ag__trace_enabled, memory_order_relaxed))
		return ag__err(AG_EINVAL,
			       "ag_trace_start: a trace is already running");
	f = fopen(path, "w");
	if (!f)
		return ag__err(AG_EIO, "ag_trace_start: cannot create %s: %s",
			       path, strerror(errno));
	reserve_chunks();
	tr.f = f;
	tr.from_env = from_env;
	tr.t_start = ag__trace_now();
	atomic_fetch_add_explicit(&tr.session, 1, memory_order_relaxed);
	atomic_store_explicit(&ag__trace_enabled, 1, memory_order_release);
	return 0;
}

int ag_trace_start(const char *path)
{
	int ret;

	if (!path || !*path)
		return ag__err(AG_EINVAL, "ag_trace_start: path is %s",
			       path ? "empty" : "NULL");
	pthread_mutex_lock(&tr.lock);
	ret = start_locked(path, false);
	pthread_mutex_unlock(&tr.lock);
	return ret;
}

static void put_name(FILE *f, const char *s)
{
	fputc('"', f);
	for (; s && *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\')
			fprintf(f, "\\%c", c);
		else if (c < 0x20)
			fprintf(f, "\\u%04x", c);
		else
			fputc(c, f);
	}
	fputc('"', f);
}

static void put_event(FILE *f, int pid, int tid, const struct trace_ev *e,
		      uint64_t base, bool *first)
{
	uint64_t t0 = e->t0 > base ? e->t0 - base : 0;
	uint64_t t1 = e->t1 > e->t0 ? e->t1 - e->t0 : 0;

	fputs(*first ? "\n" : ",\n", f);
	*first = false;
	fputs("{\"name\":", f);
	put_name(f, e->name);
	/* Microseconds with nanosecond digits. */
	fprintf(f,
		",\"ph\":\"X\",\"pid\":%d,\"tid\":%d,\"ts\":%" PRIu64
		".%03u,\"dur\":%" PRIu64 ".%03u",
		pid, tid, t0 / 1000, (unsigned)(t0 % 1000), t1 / 1000,
		(unsigned)(t1 % 1000));
	if (e->end >= 0)
		fprintf(f,
			",\"args\":{\"begin\":%" PRId64 ",\"end\":%" PRId64 "}",
			e->begin, e->end);
	fputc('}', f);
}

/* Under tr.lock: writes every buffer's events and frees dead buffers. */
static int stop_locked(void)
{
	unsigned s = atomic_load_explicit(&tr.session, memory_order_relaxed);
	struct trace_buf **pp = &tr.bufs;
	FILE *f = tr.f;
	int pid = (int)getpid();
	bool first = true;
	int bad;

	if (!atomic_load_explicit(&ag__trace_enabled, memory_order_relaxed))
		return ag__err(AG_EINVAL, "ag_trace_stop: no trace is running");
	atomic_store_explicit(&ag__trace_enabled, 0, memory_order_relaxed);
	fputs("{\"displayTimeUnit\":\"ns\",\"traceEvents\":[", f);
	while (*pp) {
		struct trace_buf *b = *pp;
		bool dead;

		pthread_mutex_lock(&b->lock);
		if (b->session == s && b->head && b->head->n) {
			fputs(first ? "\n" : ",\n", f);
			first = false;
			fprintf(f,
				"{\"name\":\"thread_name\",\"ph\":\"M\","
				"\"pid\":%d,\"tid\":%d,\"args\":{\"name\":",
				pid, b->tid);
			put_name(f, b->lane);
			fputs("}}", f);
			for (struct trace_chunk *c = b->head; c; c = c->next)
				for (size_t i = 0; i < c->n; i++)
					put_event(f, pid, b->tid, &c->ev[i],
						  tr.t_start, &first);
		}
		buf_clear(b);
		dead = b->dead;
		pthread_mutex_unlock(&b->lock);
		if (dead) {
			*pp = b->next;
			pthread_mutex_destroy(&b->lock);
			ag__mfree(b);
		} else {
			pp = &b->next;
		}
	}
	fputs("\n]}\n", f);
	bad = ferror(f);
	bad |= fclose(f);
	tr.f = NULL;
	if (bad)
		return ag__err(AG_EIO,
			       "ag_trace_stop: writing the trace failed");
	return 0;
}

int ag_trace_stop(void)
{
	int ret;

	pthread_mutex_lock(&tr.lock);
	ret = stop_locked();
	pthread_mutex_unlock(&tr.lock);
	return ret;
}

void ag__trace_env(void)
{
	static atomic_int checked;
	const char *path;

	if (atomic_load_explicit(&checked, memory_order_acquire) ||
	    atomic_exchange_explicit(&checked, 1, memory_order_acq_rel))
		return;
	path = ag__env_str("AG_TRACE");
	if (!path)
		return;
	pthread_mutex_lock(&tr.lock);
	/* A trace the user already started wins; errors stay silent here. */
	if (!atomic_load_explicit(&ag__trace_enabled, memory_order_relaxed))
		start_locked(path, true);
	pthread_mutex_unlock(&tr.lock);
}

void ag__trace_fini(void)
{
	if (pthread_mutex_trylock(&tr.lock))
		return;
	if (tr.from_env &&
	    atomic_load_explicit(&ag__trace_enabled, memory_order_relaxed))
		stop_locked();
	pthread_mutex_unlock(&tr.lock);
}

/*
 * In the child of fork(): the other threads' buffers belong to threads that
 * do not exist here, and the open file is the parent's.  Start clean, with
 * tracing off; the child does not restart an AG_TRACE trace.
 */
void ag__trace_atfork_child(void)
{
	struct trace_buf *b = tr.bufs;

	pthread_mutex_init(&tr.lock, NULL);
	pthread_mutex_init(&tr.chunk_lock, NULL);
	while (b) {
		struct trace_buf *next = b->next;

		chunks_free(b->head);
		ag__mfree(b);
		b = next;
	}
	tr.bufs = NULL;
	chunks_free(tr.free_chunks);
	tr.free_chunks = NULL;
	tr.nfree = 0;
	if (tr.f) {
		__fpurge(tr.f); /* the parent writes its own copy */
		fclose(tr.f);
		tr.f = NULL;
	}
	tr.from_env = false;
	atomic_store_explicit(&ag__trace_enabled, 0, memory_order_relaxed);
	if (my_buf) {
		pthread_setspecific(buf_key, NULL);
		my_buf = NULL;
	}
}
