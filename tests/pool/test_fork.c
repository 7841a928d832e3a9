// SPDX-License-Identifier: MIT
/*
 * fork() with a running pool: the child starts a fresh pool on first use
 * and gets the right results; the parent's pool keeps working.
 */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ag/pool.h>

#include "../tsan/tap.h"
#include "internal.h"
#include "pool/pool.h"
#include "util.h"

#if UNDER_TSAN
/*
 * ThreadSanitizer kills a child that starts threads after a multithreaded
 * fork unless told otherwise; the pool's child handler is exactly what
 * makes that safe here.
 */
const char *__tsan_default_options(void);
const char *__tsan_default_options(void)
{
	return "die_after_fork=0";
}
#endif

static void sum_fn(int64_t b, int64_t e, void *arg)
{
	atomic_llong *sum = arg;
	long long s = 0;

	for (int64_t i = b; i < e; i++)
		s += i;
	atomic_fetch_add(sum, s);
}

static long long psum(int64_t n)
{
	atomic_llong sum = 0;

	if (ag_parallel_for(n, 64, sum_fn, &sum))
		return -1;
	return atomic_load(&sum);
}

/* Runs in the child: exit status 0 when the pool works there. */
static int child(void)
{
	int64_t n = 100000;

	if (ag__pool_is_worker())
		return 2;
	for (int i = 0; i < 20; i++)
		if (psum(n) != (long long)n * (n - 1) / 2)
			return 1;
	if (ag_get_num_threads() != 2)
		return 3;
	/* And it can resize like any process. */
	if (ag_set_num_threads(3) || psum(n) != (long long)n * (n - 1) / 2)
		return 4;
	return 0;
}

static int fork_and_check(void)
{
	int status;
	pid_t pid;

	fflush(stdout);
	pid = fork();
	TAP_CHECK(pid >= 0);
	if (pid == 0)
		_exit(child());
	TAP_CHECK(waitpid(pid, &status, 0) == pid);
	TAP_CHECKF(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		   "child status %#x", status);
	return 0;
}

static int test_fork_with_running_pool(void)
{
	int64_t n = 100000;

	TAP_CHECK(ag_set_num_threads(2) == 0);
	TAP_CHECK(psum(n) == (long long)n * (n - 1) / 2);
	for (int i = 0; i < 3; i++)
		TAP_CHECK(fork_and_check() == 0);
	TAP_CHECK(psum(n) == (long long)n * (n - 1) / 2);
	return 0;
}

/* The child of a process that never used the pool. */
static int test_fork_before_first_use(void)
{
	TAP_CHECK(fork_and_check() == 0);
	return 0;
}

/*
 * AG_TRACE in a process that exits normally: the trace is written by the
 * pool's exit path.  Run in a child, which has not used the pool yet.
 */
static int test_env_trace_written_at_exit(void)
{
	char path[64], buf[1 << 16];
	size_t n;
	int status;
	FILE *f;
	pid_t pid;

	snprintf(path, sizeof(path), "/tmp/ag-exit-trace-%d.json",
		 (int)getpid());
	fflush(stdout);
	pid = fork();
	TAP_CHECK(pid >= 0);
	if (pid == 0) {
		setenv("AG_TRACE", path, 1);
		if (psum(100000) != 100000LL * 99999 / 2)
			_exit(1);
		exit(0); /* not _exit: destructors write the trace */
	}
	TAP_CHECK(waitpid(pid, &status, 0) == pid);
	TAP_CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	f = fopen(path, "r");
	TAP_CHECK(f);
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	unlink(path);
	buf[n] = 0;
	TAP_CHECK(strstr(buf, "\"traceEvents\""));
	TAP_CHECK(strstr(buf, "\"name\":\"parallel_for\""));
	TAP_CHECK(n >= 3 && !strcmp(buf + n - 3, "]}\n"));
	return 0;
}

static void long_chunk(int64_t b, int64_t e, void *arg)
{
	(void)b;
	(void)e;
	(void)arg;
	burn(5000000);
}

static void *busy_user(void *arg)
{
	(void)arg;
	for (;;)
		ag_parallel_for(8, 1, long_chunk, NULL);
	return NULL;
}

/*
 * exit() while a user thread keeps the pool busy must not hang: the pool's
 * exit path waits briefly for busy workers, then leaves them be.
 */
static int test_exit_while_busy(void)
{
	uint64_t t0;
	int status = 0;
	pid_t pid, r;

	fflush(stdout);
	pid = fork();
	TAP_CHECK(pid >= 0);
	if (pid == 0) {
		pthread_t th;

		if (pthread_create(&th, NULL, busy_user, NULL))
			_exit(5);
		usleep(50000);
		exit(0); /* runs the pool's destructor */
	}
	t0 = now_ns();
	while ((r = waitpid(pid, &status, WNOHANG)) == 0 &&
	       now_ns() - t0 < 20000000000ull)
		usleep(10000);
	if (r == 0) {
		kill(pid, SIGKILL);
		waitpid(pid, &status, 0);
	}
	printf("# child exited after %.0f ms\n", (double)(now_ns() - t0) / 1e6);
	TAP_CHECKF(r == pid, "exit() hung with a busy pool");
	TAP_CHECKF(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		   "child status %#x", status);
	return 0;
}

static const struct tap_test tests[] = {
	TAP_TEST(test_fork_before_first_use),
	TAP_TEST(test_env_trace_written_at_exit),
	TAP_TEST(test_fork_with_running_pool),
	TAP_TEST(test_exit_while_busy),
	{ 0 },
};

int main(void)
{
	setenv("AG_NUM_THREADS", "2", 1);
	return tap_run(tests);
}
