// SPDX-License-Identifier: MIT
/*
 * Tracing: the file is valid JSON (checked by a minimal parser here) with
 * one complete event per parallel_for chunk and per engine slice, lanes per
 * worker, the trace's own buffer allocations as slices of their own, and
 * the start/stop errors.
 */
#include <ctype.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ag/error.h>
#include <ag/pool.h>
#include <ag/trace.h>

#include "../tsan/tap.h"
#include "internal.h"
#include "pool/pool.h"
#include "util.h"

/* ---- a minimal JSON syntax checker ---- */

struct js {
	const char *p;
	int depth;
};

static void ws(struct js *j)
{
	while (isspace((unsigned char)*j->p))
		j->p++;
}

static bool value(struct js *j);

static bool string(struct js *j)
{
	if (*j->p != '"')
		return false;
	for (j->p++; *j->p != '"'; j->p++) {
		if (!*j->p || (unsigned char)*j->p < 0x20)
			return false;
		if (*j->p == '\\') {
			j->p++;
			if (*j->p == 'u') {
				for (int i = 0; i < 4; i++)
					if (!isxdigit((unsigned char)*++j->p))
						return false;
			} else if (!strchr("\"\\/bfnrt", *j->p) || !*j->p) {
				return false;
			}
		}
	}
	j->p++;
	return true;
}

static bool number(struct js *j)
{
	const char *s = j->p;

	if (*j->p == '-')
		j->p++;
	if (!isdigit((unsigned char)*j->p))
		return false;
	while (isdigit((unsigned char)*j->p))
		j->p++;
	if (*j->p == '.') {
		j->p++;
		if (!isdigit((unsigned char)*j->p))
			return false;
		while (isdigit((unsigned char)*j->p))
			j->p++;
	}
	return j->p > s;
}

static bool list(struct js *j, char close, bool keys)
{
	j->p++;
	ws(j);
	if (*j->p == close) {
		j->p++;
		return true;
	}
	for (;;) {
		ws(j);
		if (keys) {
			if (!string(j))
				return false;
			ws(j);
			if (*j->p++ != ':')
				return false;
			ws(j);
		}
		if (!value(j))
			return false;
		ws(j);
		if (*j->p == close) {
			j->p++;
			return true;
		}
		if (*j->p++ != ',')
			return false;
	}
}

static bool value(struct js *j)
{
	bool ok;

	if (++j->depth > 64)
		return false;
	switch (*j->p) {
	case '{':
		ok = list(j, '}', true);
		break;
	case '[':
		ok = list(j, ']', false);
		break;
	case '"':
		ok = string(j);
		break;
	default:
		ok = number(j);
		break;
	}
	j->depth--;
	return ok;
}

static bool json_valid(const char *s)
{
	struct js j = { s, 0 };

	ws(&j);
	if (!value(&j))
		return false;
	ws(&j);
	return *j.p == 0;
}

static char *slurp(const char *path)
{
	FILE *f = fopen(path, "r");
	char *buf;
	long n;

	if (!f)
		return NULL;
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	rewind(f);
	buf = malloc((size_t)n + 1);
	if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
		free(buf);
		buf = NULL;
	}
	if (buf)
		buf[n] = 0;
	fclose(f);
	return buf;
}

static int count(const char *s, const char *needle)
{
	int n = 0;

	while ((s = strstr(s, needle))) {
		n++;
		s += strlen(needle);
	}
	return n;
}

/* ---- workload ---- */

static atomic_int chunks;

static void work(int64_t b, int64_t e, void *arg)
{
	(void)arg;
	burn((int)(e - b) * 50);
	atomic_fetch_add(&chunks, 1);
}

struct node_task {
	struct ag_task task;
};

/* What the engine does per node. */
static void node_run(struct ag_task *t)
{
	uint64_t t0 = ag__trace_now();

	(void)t;
	burn(2000);
	ag__trace_slice("TanhBackward", t0, ag__trace_now());
}

static int run_work(void)
{
	struct node_task nodes[40];
	struct ag_group g;

	atomic_store(&chunks, 0);
	TAP_CHECK(ag_parallel_for(1000, 10, work, NULL) == 0);
	ag__group_init(&g);
	for (int i = 0; i < 40; i++) {
		ag__task_init(&nodes[i].task, node_run);
		ag__group_submit(&g, &nodes[i].task);
	}
	ag__group_wait(&g);
	return 0;
}

static char path[64];
static char env_path[64];

static int check_file(const char *p, int want_chunks)
{
	char *s = slurp(p);

	TAP_CHECK(s);
	TAP_CHECKF(json_valid(s), "invalid JSON in %s", p);
	TAP_CHECK(strstr(s, "\"traceEvents\""));
	TAP_CHECKF(count(s, "\"name\":\"parallel_for\"") == want_chunks,
		   "%d parallel_for slices, want %d",
		   count(s, "\"name\":\"parallel_for\""), want_chunks);
	TAP_CHECK(count(s, "\"name\":\"TanhBackward\"") == 40);
	/* and the trace's own buffer allocations, shown as slices */
	TAP_CHECK(count(s, "\"ph\":\"X\"") ==
		  want_chunks + 40 + count(s, "\"name\":\"trace buffer\""));
	TAP_CHECK(count(s, "\"name\":\"thread_name\"") >= 1);
	TAP_CHECK(strstr(s, "\"args\":{\"begin\":"));
	free(s);
	return 0;
}

/* AG_TRACE was set before the pool first started (in main). */
static int test_env_trace(void)
{
	TAP_CHECK(run_work() == 0);
	TAP_CHECK(ag_trace_stop() == 0);
	TAP_CHECK(check_file(env_path, atomic_load(&chunks)) == 0);
	unlink(env_path);
	return 0;
}

static int test_start_stop(void)
{
	TAP_CHECK(ag_set_num_threads(3) == 0);
	TAP_CHECK(ag_trace_start(path) == 0);
	TAP_CHECK(run_work() == 0);
	TAP_CHECK(ag_trace_stop() == 0);
	TAP_CHECK(check_file(path, atomic_load(&chunks)) == 0);
	/* Work between sessions is not recorded in the next one. */
	TAP_CHECK(run_work() == 0);
	TAP_CHECK(ag_trace_start(path) == 0);
	TAP_CHECK(run_work() == 0);
	TAP_CHECK(ag_trace_stop() == 0);
	TAP_CHECK(check_file(path, atomic_load(&chunks)) == 0);
	unlink(path);
	return 0;
}

static int test_errors(void)
{
	TAP_CHECK(ag_trace_stop() == -AG_EINVAL);
	TAP_CHECK(ag_trace_start(NULL) == -AG_EINVAL);
	TAP_CHECK(ag_trace_start("/nonexistent-dir/x.json") == -AG_EIO);
	TAP_CHECK(ag_errcode() == AG_EIO);
	TAP_CHECK(ag_trace_start(path) == 0);
	TAP_CHECK(ag_trace_start(path) == -AG_EINVAL);
	TAP_CHECK(ag_trace_stop() == 0);
	unlink(path);
	return 0;
}

/* Threads that traced and exited leave their slices in the file. */
static void *short_lived(void *arg)
{
	(void)arg;
	run_work();
	return NULL;
}

static int test_exited_threads(void)
{
	pthread_t th[3];
	char *s;

	TAP_CHECK(ag_trace_start(path) == 0);
	for (int i = 0; i < 3; i++)
		TAP_CHECK(pthread_create(&th[i], NULL, short_lived, NULL) == 0);
	for (int i = 0; i < 3; i++)
		pthread_join(th[i], NULL);
	TAP_CHECK(ag_trace_stop() == 0);
	s = slurp(path);
	TAP_CHECK(s && json_valid(s));
	TAP_CHECK(count(s, "\"name\":\"TanhBackward\"") == 120);
	/* each new thread's first slice allocated its buffer, visibly */
	TAP_CHECKF(count(s, "\"name\":\"trace buffer\"") >= 3,
		   "%d 'trace buffer' slices, want one per new thread at least",
		   count(s, "\"name\":\"trace buffer\""));
	free(s);
	unlink(path);
	return 0;
}

static int test_off_is_cheap(void)
{
	uint64_t t0 = now_ns();

	for (int i = 0; i < 1000000; i++)
		ag__trace_slice("x", 0, 1);
	printf("# ag__trace_slice while off: %.2f ns/call\n",
	       (double)(now_ns() - t0) / 1e6);
	TAP_CHECK(!ag__trace_on());
	return 0;
}

static const struct tap_test tests[] = {
	TAP_TEST(test_env_trace),    TAP_TEST(test_errors),
	TAP_TEST(test_start_stop),   TAP_TEST(test_exited_threads),
	TAP_TEST(test_off_is_cheap), { 0 },
};

int main(void)
{
	snprintf(path, sizeof(path), "/tmp/ag-trace-test-%d.json",
		 (int)getpid());
	snprintf(env_path, sizeof(env_path), "/tmp/ag-trace-env-%d.json",
		 (int)getpid());
	setenv("AG_TRACE", env_path, 1);
	setenv("AG_NUM_THREADS", "2", 1);
	return tap_run(tests);
}
