// SPDX-License-Identifier: MIT
/*
 * fork() with a running pool: the child starts a fresh pool on first use
 * and gets the right results; the parent's pool keeps working.  And fork()
 * while another thread holds the library's global locks (custom function
 * names, hook lists): the child can still use them.
 */
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ag/ag.h>
#include <ag/pool.h>

#include "../tsan/tap.h"
#include "../tsan/watchdog.h"
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

/*
 * Scopes the parent's other threads held open ended with them: a child
 * forked while another thread holds one counts only its own, and splits
 * its parallel calls (a count left at 2 would fill a pool of two).
 */
static atomic_int held, release_held;

static void *hold_scope(void *arg)
{
	struct ag_scope *s = ag_scope_begin();

	(void)arg;
	atomic_store(&held, s != NULL);
	while (!atomic_load(&release_held))
		sched_yield();
	ag_scope_end(s);
	return NULL;
}

static int child_scoped(void)
{
	if (atomic_load(&ag__scoped_threads) != 1)
		return 1;
	return child();
}

static int test_fork_while_another_thread_holds_a_scope(void)
{
	struct ag_scope *s;
	pthread_t t;
	int status;
	pid_t pid;

	TAP_CHECK(ag_set_num_threads(2) == 0);
	atomic_store(&held, 0);
	atomic_store(&release_held, 0);
	TAP_CHECK(pthread_create(&t, NULL, hold_scope, NULL) == 0);
	while (!atomic_load(&held))
		sched_yield();
	s = ag_scope_begin();
	TAP_CHECK(s);
	TAP_CHECK(atomic_load(&ag__scoped_threads) == 2);
	fflush(stdout);
	pid = fork();
	TAP_CHECK(pid >= 0);
	if (pid == 0)
		_exit(child_scoped());
	TAP_CHECK(waitpid(pid, &status, 0) == pid);
	atomic_store(&release_held, 1);
	pthread_join(t, NULL);
	ag_scope_end(s);
	TAP_CHECKF(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		   "child status %#x", status);
	TAP_CHECK(atomic_load(&ag__scoped_threads) == 0);
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

/* ---- fork while another thread uses custom functions and hooks ---- */

#define NNAMES 200
#define FN_N 8

static char fn_name[NNAMES][24];
static struct ag_function_ops fn_ops[NNAMES];

/* y = 2 x */
static int twice_fwd(struct ag_ctx *ctx, struct ag_tensor *const *in, int nin,
		     struct ag_tensor **out, int nout)
{
	(void)ctx;
	(void)nin;
	(void)nout;
	out[0] = ag_mul_scalar(in[0], 2.0);
	return out[0] ? 0 : -ag_errcode();
}

static int twice_bwd(struct ag_ctx *ctx, struct ag_tensor *const *g, int nout,
		     struct ag_tensor **gi, int nin)
{
	(void)ctx;
	(void)nout;
	(void)nin;
	gi[0] = ag_mul_scalar(g[0], 2.0);
	return gi[0] ? 0 : -ag_errcode();
}

/* A hook that changes nothing: it only makes the node grow a hook list. */
static struct ag_tensor *keep_hook(struct ag_tensor *g, void *arg)
{
	(void)g;
	(void)arg;
	return NULL;
}

/*
 * sum(f(x)) with a hook on f(x), backward; 0 when x.grad is 2 everywhere.
 * A new function name walks the whole name list under its lock; a hook
 * on a new node allocates its list under the hook allocation lock.
 */
static int apply_and_backward(const struct ag_function_ops *f)
{
	struct ag_scope *s = ag_scope_begin();
	int64_t n = FN_N;
	struct ag_tensor *x = ag_ones(AG_F64, 1, &n), *y = NULL, *g;
	struct ag_hook *h = NULL;
	int rc = -1;

	ag_tensor_set_requires_grad(x, true);
	if (ag_function_apply(f, &x, 1, &y, 1, NULL))
		goto out;
	h = ag_tensor_register_hook(y, keep_hook, NULL);
	if (!h || ag_backward(ag_sum(y), NULL, NULL))
		goto out;
	g = ag_tensor_grad(x);
	rc = 0;
	for (int i = 0; i < FN_N; i++)
		if (!g || ag__get(g, i) != 2.0)
			rc = -1;
out:
	ag_hook_remove(h);
	ag_scope_end(s);
	return rc;
}

static void *hammer(void *arg)
{
	atomic_int *stop = arg;

	for (int i = 0; !atomic_load(stop); i++)
		if (apply_and_backward(&fn_ops[(i * 7) % NNAMES]))
			atomic_store(stop, 2);
	return NULL;
}

/* The child: a name no thread used yet, so fn_names takes its lock. */
static int fork_child_apply(void)
{
	static const struct ag_function_ops child_fn = {
		.name = "ForkChildTwice",
		.forward = twice_fwd,
		.backward = twice_bwd,
	};

	if (apply_and_backward(&child_fn))
		return 1;
	if (ag__live_nodes() < 0)
		return 2;
	return 0;
}

/*
 * Issue 12, item 4: a child forked while the hammer held the function name
 * table's lock deadlocked on its first apply of a new function.
 */
static int test_fork_while_applying(void)
{
	enum { FORKS = 300 };
	atomic_int stop = 0;
	pthread_t th;
	int bad = 0;

	watchdog_arm("fork while applying", 100);
	for (int i = 0; i < NNAMES; i++) {
		snprintf(fn_name[i], sizeof(fn_name[i]), "HammerTwice%d", i);
		fn_ops[i] = (struct ag_function_ops){ .name = fn_name[i],
						      .forward = twice_fwd,
						      .backward = twice_bwd };
		TAP_CHECK(apply_and_backward(&fn_ops[i]) == 0);
	}
	TAP_CHECK(pthread_create(&th, NULL, hammer, &stop) == 0);
	for (int i = 0; i < SCALE(FORKS) && !bad; i++) {
		uint64_t t0 = now_ns();
		int status = 0;
		pid_t pid, r;

		fflush(stdout);
		pid = fork();
		if (pid < 0) {
			bad = -1;
			break;
		}
		if (pid == 0)
			_exit(fork_child_apply());
		while ((r = waitpid(pid, &status, WNOHANG)) == 0 &&
		       now_ns() - t0 < 20000000000ull)
			usleep(200);
		if (r == 0) {
			printf("# fork %d: the child hung\n", i);
			kill(pid, SIGKILL);
			waitpid(pid, &status, 0);
			bad = 1;
		} else if (!WIFEXITED(status) || WEXITSTATUS(status)) {
			printf("# fork %d: child status %#x\n", i, status);
			bad = 2;
		}
	}
	if (!atomic_load(&stop))
		atomic_store(&stop, 1);
	pthread_join(th, NULL);
	watchdog_disarm();
	TAP_CHECK(bad == 0);
	TAP_CHECK(atomic_load(&stop) == 1); /* the hammer's own checks */
	return 0;
}

static const struct tap_test tests[] = {
	TAP_TEST(test_fork_before_first_use),
	TAP_TEST(test_env_trace_written_at_exit),
	TAP_TEST(test_fork_with_running_pool),
	TAP_TEST(test_exit_while_busy),
	TAP_TEST(test_fork_while_applying),
	TAP_TEST(test_fork_while_another_thread_holds_a_scope),
	{ 0 },
};

int main(void)
{
	setenv("AG_NUM_THREADS", "2", 1);
	return tap_run(tests);
}
