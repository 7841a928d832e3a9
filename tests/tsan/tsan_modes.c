// SPDX-License-Identifier: MIT
/*
 * Grad and inference mode per thread, run under ThreadSanitizer: several
 * threads enter different modes at the same time (held together by
 * barriers), each must see only its own, the guards restore on every exit,
 * and nothing the modes touch is shared.
 */
#include <pthread.h>
#include <stdbool.h>
#include <string.h>

#include <ag/ag.h>

#include "internal.h"
#include "tap.h"

#define NTHREADS 8
#define ROUNDS 200

static pthread_barrier_t barrier;

struct worker {
	pthread_t th;
	int id;
	void (*body)(struct worker *w);
	int failed;
};

static void *worker_main(void *arg)
{
	struct worker *w = arg;

	w->body(w);
	return NULL;
}

/* Runs body on NTHREADS threads at once; 0 if every one passed. */
static int run_threads(void (*body)(struct worker *w))
{
	struct worker ws[NTHREADS];
	int failed = 0;

	pthread_barrier_init(&barrier, NULL, NTHREADS);
	for (int i = 0; i < NTHREADS; i++) {
		ws[i] = (struct worker){ .id = i, .body = body };
		if (pthread_create(&ws[i].th, NULL, worker_main, &ws[i]))
			return 1;
	}
	for (int i = 0; i < NTHREADS; i++) {
		pthread_join(ws[i].th, NULL);
		if (ws[i].failed)
			printf("# thread %d failed\n", i);
		failed |= ws[i].failed;
	}
	pthread_barrier_destroy(&barrier);
	return failed;
}

static void sync_all(void)
{
	pthread_barrier_wait(&barrier);
}

/*
 * In a worker, a failed check is recorded but does not return: the other
 * threads wait for this one at the next barrier.
 */
#define W_CHECK(w, cond)                                                      \
	do {                                                                  \
		if (!(cond)) {                                                \
			printf("# thread %d: %s:%d: check failed: %s (%s)\n", \
			       (w)->id, __FILE__, __LINE__, #cond,            \
			       ag_errmsg());                                  \
			(w)->failed = 1;                                      \
		}                                                             \
	} while (0)

/* Every thread starts with grad on and inference off. */
static void body_defaults(struct worker *w)
{
	W_CHECK(w, ag_is_grad_enabled());
	W_CHECK(w, !ag_is_inference_mode_enabled());
}

/*
 * Thread i holds mode i % 3 (no-grad, inference, enable-grad after
 * set_grad_enabled(false)) while all others hold theirs, then checks.
 */
static void body_different_modes_at_once(struct worker *w)
{
	for (int r = 0; r < ROUNDS / 10; r++) {
		int kind = (w->id + r) % 3;
		struct ag_mode m;
		bool prev = true;

		if (kind == 0) {
			m = ag_no_grad_enter();
		} else if (kind == 1) {
			m = ag_inference_mode_enter();
		} else {
			prev = ag_set_grad_enabled(false);
			m = ag_enable_grad_enter();
		}
		sync_all(); /* every thread is now in its mode */
		W_CHECK(w, ag_is_grad_enabled() == (kind == 2));
		W_CHECK(w, ag_is_inference_mode_enabled() == (kind == 1));
		sync_all(); /* nobody exits before everyone checked */
		ag_mode_exit(m);
		if (kind == 2) {
			W_CHECK(w, !ag_is_grad_enabled());
			ag_set_grad_enabled(prev);
		}
		W_CHECK(w, ag_is_grad_enabled());
		W_CHECK(w, !ag_is_inference_mode_enabled());
	}
}

static bool inside_no_grad_return(void)
{
	AG_NO_GRAD_SCOPE();
	return ag_is_grad_enabled();
}

static int inside_inference_return(int depth)
{
	AG_INFERENCE_MODE_SCOPE();
	if (depth > 0)
		return inside_inference_return(depth - 1);
	return ag_is_inference_mode_enabled() && !ag_is_grad_enabled();
}

/* The block guards restore on return and break, on every thread. */
static void body_guards(struct worker *w)
{
	for (int r = 0; r < ROUNDS; r++) {
		W_CHECK(w, !inside_no_grad_return());
		W_CHECK(w, inside_inference_return(w->id % 4));
		W_CHECK(w, ag_is_grad_enabled());
		W_CHECK(w, !ag_is_inference_mode_enabled());
		for (int i = 0;; i++) {
			AG_NO_GRAD_SCOPE();
			{
				AG_ENABLE_GRAD_SCOPE();
				W_CHECK(w, ag_is_grad_enabled());
			}
			W_CHECK(w, !ag_is_grad_enabled());
			if (i == w->id % 3)
				break;
		}
		W_CHECK(w, ag_is_grad_enabled());
	}
}

/* Tensors made on a thread follow that thread's mode only. */
static void body_tensors(struct worker *w)
{
	int64_t shape[2] = { 4, 4 };

	for (int r = 0; r < ROUNDS / 10; r++) {
		bool inf = (w->id + r) % 2;
		struct ag_tensor *t, *v;
		int rc;

		if (inf) {
			AG_INFERENCE_MODE_SCOPE();
			t = ag_ones(AG_F32, 2, shape);
		} else {
			t = ag_ones(AG_F32, 2, shape);
		}
		sync_all();
		W_CHECK(w, t && ag_tensor_is_inference(t) == inf);
		v = ag_transpose(t, 0, 1);
		W_CHECK(w, v && ag_tensor_is_inference(v) == inf);
		if (inf) {
			/* in place on an inference tensor: only in the mode */
			AG_INFERENCE_MODE_SCOPE();
			rc = ag_add_scalar_(v, 1);
		} else {
			rc = ag_add_scalar_(v, 1);
		}
		W_CHECK(w, rc == 0);
		W_CHECK(w, ag__get(t, 5) == 2.0);
		W_CHECK(w, ag_tensor_version(t) == (inf ? 0u : 1u));
		ag_tensor_put(v);
		ag_tensor_put(t);
		sync_all();
	}
}

/* Errors are per thread too. */
static void body_errors(struct worker *w)
{
	int64_t bad = -1 - w->id;
	char want[64];

	W_CHECK(w, ag_errcode() == 0);
	W_CHECK(w, !ag_zeros(AG_F32, 1, &bad));
	sync_all();
	W_CHECK(w, ag_errcode() == AG_EINVAL);
	snprintf(want, sizeof(want), "negative size %d", -1 - w->id);
	W_CHECK(w, strstr(ag_errmsg(), want));
	sync_all();
	ag_clear_error();
}

static int test_new_threads_start_with_defaults(void)
{
	struct ag_mode m = ag_inference_mode_enter();
	int rc = run_threads(body_defaults);

	TAP_CHECK(ag_is_inference_mode_enabled());
	ag_mode_exit(m);
	return rc;
}

static int test_different_modes_at_once(void)
{
	return run_threads(body_different_modes_at_once);
}

static int test_guards_restore(void)
{
	return run_threads(body_guards);
}

static int test_tensors_follow_thread_mode(void)
{
	int rc = run_threads(body_tensors);

	TAP_CHECKF(ag__live_tensors() == 0, "%ld tensors leaked",
		   ag__live_tensors());
	TAP_CHECKF(ag__live_storages() == 0, "%ld storages leaked",
		   ag__live_storages());
	TAP_CHECKF(ag__live_bytes() == 0, "%ld bytes leaked", ag__live_bytes());
	return rc;
}

static int test_errors_per_thread(void)
{
	int rc = run_threads(body_errors);

	TAP_CHECK(ag_errcode() == 0);
	return rc;
}

static const struct tap_test tests[] = {
	TAP_TEST(test_new_threads_start_with_defaults),
	TAP_TEST(test_different_modes_at_once),
	TAP_TEST(test_guards_restore),
	TAP_TEST(test_tensors_follow_thread_mode),
	TAP_TEST(test_errors_per_thread),
	{ 0 },
};

int main(void)
{
	return tap_run(tests);
}
