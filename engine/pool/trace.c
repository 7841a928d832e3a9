// SPDX-License-Identifier: MIT
/*
 * Chrome trace-event JSON of what ran where.  Each thread appends to its own
 * buffer under its own mutex, which only ag_trace_stop() ever contends, so
 * there is no global lock on the hot path; while tracing is off the cost is
 * the relaxed load in ag__trace_on().
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
#include <ag/trace.h>

#include "internal.h"
#include "pool.h"

struct trace_ev {
	const char *name;
	uint64_t t0, t1;
	int64_t begin, end; /* end < 0: no args */
};

struct trace_buf {
	pthread_mutex_t lock; /* the owner thread and ag_trace_stop() */
	struct trace_ev *ev;
	size_t n, cap;
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
} tr = { .lock = PTHREAD_MUTEX_INITIALIZER };

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
	struct trace_buf *b = calloc(1, sizeof(*b));
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

static void trace_add(const char *name, uint64_t t0, uint64_t t1, int64_t begin,
		      int64_t end)
{
	struct trace_buf *b = my_buf;
	unsigned s;

	if (!b) {
		b = buf_register();
		if (!b)
			return;
	}
	pthread_mutex_lock(&b->lock);
	s = atomic_load_explicit(&tr.session, memory_order_relaxed);
	if (b->session != s) {
		/* Left over from an earlier session: drop it. */
		b->session = s;
		b->n = 0;
	}
	if (b->n == b->cap) {
		size_t cap = b->cap ? 2 * b->cap : 1024;
		struct trace_ev *ev = realloc(b->ev, cap * sizeof(*ev));

		if (!ev)
			goto out; /* the trace loses a slice; work goes on */
		b->ev = ev;
		b->cap = cap;
	}
	b->ev[b->n++] = (struct trace_ev){ name, t0, t1, begin, end };
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
		if (b->session == s && b->n) {
			fputs(first ? "\n" : ",\n", f);
			first = false;
			fprintf(f,
				"{\"name\":\"thread_name\",\"ph\":\"M\","
				"\"pid\":%d,\"tid\":%d,\"args\":{\"name\":",
				pid, b->tid);
			put_name(f, b->lane);
			fputs("}}", f);
			for (size_t i = 0; i < b->n; i++)
				put_event(f, pid, b->tid, &b->ev[i], tr.t_start,
					  &first);
		}
		b->n = 0;
		dead = b->dead;
		pthread_mutex_unlock(&b->lock);
		if (dead) {
			*pp = b->next;
			pthread_mutex_destroy(&b->lock);
			free(b->ev);
			free(b);
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
	path = getenv("AG_TRACE");
	if (!path || !*path)
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
	while (b) {
		struct trace_buf *next = b->next;

		free(b->ev);
		free(b);
		b = next;
	}
	tr.bufs = NULL;
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
