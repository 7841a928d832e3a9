// SPDX-License-Identifier: MIT
/*
 * Graphs at scale: a backward through a 10^6-node chain and through a
 * 10^6-edge fan-in, each built, run and freed on a thread with a 64 KiB
 * stack, so any recursion over the graph's depth or width overflows it;
 * and a graph whose saved tensors outgrow the address space allowed
 * (RLIMIT_AS, in a child process) ends in a clean AG_ENOMEM.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ag/ag.h>

#include "internal.h"
#include "../tsan/tap.h"

#if defined(__SANITIZE_ADDRESS__)
#define AG_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define AG_SANITIZED 1
#endif
#endif

/* Under ASan every block carries redzones: a tenth of the graph. */
#ifdef AG_SANITIZED
#define SCALE_N 100000
#else
#define SCALE_N 1000000
#endif

#define SMALL_STACK (64 * 1024)

static bool no_leaks(void)
{
	return ag__live_tensors() == 0 && ag__live_storages() == 0 &&
	       ag__live_nodes() == 0 && ag__live_bytes() == 0;
}

/* y = x * 1.0, N times: a chain N nodes deep; d y / d x = 1. */
static void *chain(void *arg)
{
	struct ag_tensor *x = ag_scalar(AG_F64, 2.0), *y, *g;
	int *rc = arg;

	*rc = 1;
	if (!x || ag_tensor_set_requires_grad(x, true))
		return NULL;
	y = ag_tensor_get(x);
	for (long i = 0; i < SCALE_N && y; i++) {
		struct ag_tensor *next = ag_mul_scalar(y, i % 2 ? 1.0 : -1.0);

		ag_tensor_put(y);
		y = next;
	}
	if (y && !ag_backward(y, NULL, NULL)) {
		g = ag_tensor_grad(x);
		/* an even count of -1 factors */
		*rc = g && ag_tensor_item(g) == 1.0 ? 0 : 2;
		ag_tensor_put(g);
	}
	ag_tensor_put(y); /* frees the chain, on this small stack */
	ag_tensor_put(x);
	return NULL;
}

/*
 * N products of one leaf, summed as a balanced tree: the leaf's
 * AccumulateGrad has N incoming edges; d sum / d x = sum of the scales.
 */
static struct ag_tensor *tree_sum(struct ag_tensor **t, long n)
{
	while (n > 1) {
		long half = (n + 1) / 2;

		for (long i = 0; i < n / 2; i++) {
			struct ag_tensor *s =
				t[2 * i] && t[2 * i + 1] ?
					ag_add(t[2 * i], t[2 * i + 1]) :
					NULL;

			ag_tensor_put(t[2 * i]);
			ag_tensor_put(t[2 * i + 1]);
			t[i] = s;
		}
		if (n % 2)
			t[n / 2] = t[n - 1];
		n = half;
	}
	return t[0];
}

static void *fan_in(void *arg)
{
	struct ag_tensor *x = ag_scalar(AG_F64, 3.0), *y, *g;
	struct ag_tensor **t = calloc(SCALE_N, sizeof(*t));
	int *rc = arg;

	*rc = 1;
	if (!t || !x || ag_tensor_set_requires_grad(x, true))
		goto out;
	for (long i = 0; i < SCALE_N; i++)
		t[i] = ag_mul_scalar(x, (double)(i % 4));
	y = tree_sum(t, SCALE_N);
	if (y && !ag_backward(y, NULL, NULL)) {
		g = ag_tensor_grad(x);
		/* 0 + 1 + 2 + 3 per four terms; exact in f64 */
		*rc = g && ag_tensor_item(g) == 1.5 * SCALE_N ? 0 : 2;
		ag_tensor_put(g);
	}
	ag_tensor_put(y);
out:
	free(t);
	ag_tensor_put(x);
	return NULL;
}

static int on_small_stack(void *(*fn)(void *), int *rc)
{
	pthread_attr_t at;
	pthread_t th;
	int e;

	pthread_attr_init(&at);
	pthread_attr_setstacksize(&at, SMALL_STACK);
	e = pthread_create(&th, &at, fn, rc);
	pthread_attr_destroy(&at);
	if (e)
		return -1;
	pthread_join(th, NULL);
	return 0;
}

static int test_chain(void)
{
	int rc = -1;

	for (int threads = 1; threads <= 2; threads++) {
		TAP_CHECK(ag_set_num_threads(threads) == 0);
		TAP_CHECK(on_small_stack(chain, &rc) == 0);
		TAP_CHECKF(rc == 0, "%d threads: rc %d: %s", threads, rc,
			   ag_errmsg());
		TAP_CHECK(no_leaks());
	}
	return 0;
}

static int test_fan_in(void)
{
	int rc = -1;

	for (int threads = 1; threads <= 2; threads++) {
		TAP_CHECK(ag_set_num_threads(threads) == 0);
		TAP_CHECK(on_small_stack(fan_in, &rc) == 0);
		TAP_CHECKF(rc == 0, "%d threads: rc %d: %s", threads, rc,
			   ag_errmsg());
		TAP_CHECK(no_leaks());
	}
	return 0;
}

/*
 * In a child limited to 512 MiB of address space: tanh saves its output,
 * so a chain of tanh over 1 MiB tensors saves 1 MiB per node until an
 * allocation fails.  The op must fail with AG_ENOMEM and a message, and
 * dropping the graph must leave nothing behind.
 */
static int oom_child(void)
{
	struct rlimit rl = { 512L << 20, 512L << 20 };
	int64_t n = 1 << 17; /* f64: 1 MiB */
	char msg[256];
	struct ag_tensor *x, *y;
	int code = 0;

	if (setrlimit(RLIMIT_AS, &rl))
		return 10;
	x = ag_ones(AG_F64, 1, &n);
	if (!x || ag_tensor_set_requires_grad(x, true))
		return 11;
	y = ag_tensor_get(x);
	for (int i = 0; i < 4096; i++) {
		struct ag_tensor *next = ag_tanh(y);

		if (!next) {
			code = ag_errcode();
			break;
		}
		ag_tensor_put(y);
		y = next;
	}
	if (code != AG_ENOMEM || !*ag_errmsg())
		return 12;
	snprintf(msg, sizeof(msg), "%s", ag_errmsg());
	ag_tensor_put(y);
	ag_tensor_put(x);
	if (!no_leaks())
		printf("# child: after '%s': %ld tensors, %ld storages, %ld nodes, %ld bytes\n",
		       msg, ag__live_tensors(), ag__live_storages(),
		       ag__live_nodes(), ag__live_bytes());
	fflush(stdout);
	return no_leaks() ? 0 : 13;
}

static int test_saved_exceed_memory(void)
{
	int status;
	pid_t pid;

#ifdef AG_SANITIZED
	/* ASan reserves terabytes of address space: RLIMIT_AS cannot apply */
	printf("# skipped under AddressSanitizer\n");
	return 0;
#endif
	pid = fork();
	TAP_CHECK(pid >= 0);
	if (pid == 0)
		_exit(oom_child());
	TAP_CHECK(waitpid(pid, &status, 0) == pid);
	TAP_CHECKF(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		   "child: %s %d", WIFEXITED(status) ? "exit" : "signal",
		   WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
	return 0;
}

static const struct tap_test tests[] = {
	TAP_TEST(test_chain),
	TAP_TEST(test_fan_in),
	TAP_TEST(test_saved_exceed_memory),
	{ 0 },
};

int main(void)
{
	return tap_run(tests);
}
