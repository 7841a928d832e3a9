// SPDX-License-Identifier: MIT
/*
 * Serving from many threads (issue 16): request threads share one model
 * and each runs inference requests (batch 1 and 4, inference mode) and
 * input-gradient requests (grad mode, batch 1) on inputs of its own, while
 * another thread calls ag_trim() again and again.  Every answer is checked
 * against the same request made first on one thread; the parameters must
 * never get a .grad; the live counters return to zero.  A watchdog turns a
 * hang into a failure.  Run again with the weights packed
 * (ag_linear_prepack) after the first answers: the threads then race to
 * make the pack's primitive for batch 4.  And once more behind an ag_gate
 * of 2 places handed on at every request (quantum 0): batch 32 makes big
 * blocks, which then come from the places' caches, shared by threads in
 * turn while ag_trim() drains them.
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <ag/ag.h>
#include <ag/pool.h>

#include "internal.h"
#include "simd.h"
#include "tap.h"
#include "watchdog.h"

#define NTHREADS 16
#define REQUESTS 24
#define IN 24
#define HID 32
#define OUT 10
#define MAXB 32

static struct ag_tensor *p[6]; /* W1 b1 W2 b2 W3 b3 */
static atomic_bool trimming;
static atomic_long trims;

struct kind {
	bool grad;
	int64_t b;
};

static const struct kind kinds[] = { { false, 1 },
				     { false, 4 },
				     { true, 1 },
				     { false, 32 } };
#define NKINDS 4

struct req_thread {
	float in[MAXB * IN];
	int64_t target[MAXB];
	float want[NKINDS][MAXB * IN];
	int bad, failed;
	char err[128];
};

static struct req_thread rt[NTHREADS];
static struct ag_gate *gate; /* NULL: none */

static struct ag_tensor *forward(struct ag_tensor *h)
{
	for (int l = 0; l < 3 && h; l++) {
		h = ag_linear(h, p[2 * l], p[2 * l + 1]);
		if (h && l < 2)
			h = ag_relu(h);
	}
	return h;
}

/* One request; out gets probabilities [b, OUT] or the input grad [b, IN]. */
static int request(struct req_thread *r, const struct kind *k, float *out)
{
	struct ag_scope *s = ag_scope_begin();
	int64_t xs[2] = { k->b, IN };
	struct ag_tensor *x, *y, *gx = NULL, *t;
	struct ag_mode md = k->grad ? ag_enable_grad_enter() :
				      ag_inference_mode_enter();
	int rc = -1;

	x = ag_from_data(AG_F32, 2, xs, r->in);
	if (!k->grad) {
		y = x ? ag_softmax(forward(x), 1) : NULL;
		if (y && !ag_tensor_copy_to(y, out, sizeof(float) * k->b * OUT))
			rc = 0;
	} else if (x && !ag_tensor_set_requires_grad(x, true)) {
		t = ag_from_data(AG_I64, 1, &k->b, r->target);
		y = t ? ag_cross_entropy(forward(x), t) : NULL;
		if (y && !ag_grad(&y, NULL, 1, &x, 1, &gx, NULL) &&
		    !ag_tensor_copy_to(gx, out, sizeof(float) * k->b * IN))
			rc = 0;
	}
	ag_mode_exit(md);
	ag_scope_end(s);
	return rc;
}

static void *req_main(void *arg)
{
	struct req_thread *r = arg;
	float got[MAXB * IN];

	if (gate && ag_gate_enter(gate)) {
		r->failed++;
		return NULL;
	}
	for (int i = 0; i < REQUESTS; i++) {
		int ki = i % NKINDS;
		const struct kind *k = &kinds[ki];
		int n = (int)k->b * (k->grad ? IN : OUT);

		if ((gate && ag_gate_yield(gate)) || request(r, k, got)) {
			snprintf(r->err, sizeof(r->err), "%s", ag_errmsg());
			r->failed++;
			break;
		}
		for (int j = 0; j < n; j++)
			if (!(fabsf(got[j] - r->want[ki][j]) <=
			      1e-6f + 1e-5f * fabsf(r->want[ki][j])))
				r->bad++;
	}
	if (gate && ag_gate_leave(gate))
		r->failed++;
	return NULL;
}

static void *trim_main(void *arg)
{
	(void)arg;
	while (atomic_load(&trimming)) {
		ag_trim();
		atomic_fetch_add(&trims, 1);
	}
	return NULL;
}

static void setup(void)
{
	struct ag_generator *g = ag_generator_new(16);
	const int64_t shapes[3][2] = { { HID, IN },
				       { HID, HID },
				       { OUT, HID } };
	struct ag_mode md = ag_no_grad_enter();

	struct ag_scope *s = ag_scope_begin();

	for (int l = 0; l < 3; l++) {
		p[2 * l] = ag_tensor_get(
			ag_mul_scalar(ag_randn(g, AG_F32, 2, shapes[l]), 0.3));
		p[2 * l + 1] = ag_tensor_get(
			ag_mul_scalar(ag_randn(g, AG_F32, 1, shapes[l]), 0.1));
	}
	ag_scope_end(s);
	ag_mode_exit(md);
	for (int i = 0; i < 6; i++)
		ag_tensor_set_requires_grad(p[i], true);
	for (int t = 0; t < NTHREADS; t++) {
		for (int j = 0; j < MAXB * IN; j++)
			rt[t].in[j] = (float)((ag_generator_next(g) >> 40) /
					      (double)(1 << 24)) -
				      0.5f;
		for (int j = 0; j < MAXB; j++)
			rt[t].target[j] = (int64_t)(ag_generator_next(g) % OUT);
	}
	ag_generator_free(g);
}

static int answer_as_one(bool packed, bool gated)
{
	pthread_t th[NTHREADS], trimmer;
	long failed = 0, bad = 0;

	memset(rt, 0, sizeof(rt));
	setup();
	for (int i = 0; i < 6; i++)
		TAP_CHECK(p[i] != NULL);
	/* the answers of one thread, first */
	for (int t = 0; t < NTHREADS; t++)
		for (int k = 0; k < NKINDS; k++)
			TAP_CHECKF(!request(&rt[t], &kinds[k], rt[t].want[k]),
				   "%s", ag_errmsg());
	for (int l = 0; l < 3 && packed; l++)
		TAP_CHECKF(ag_linear_prepack(p[2 * l]) >= 0, "%s", ag_errmsg());
	if (gated)
		TAP_CHECK(gate = ag_gate_new(2, 0));
	watchdog_arm("request threads", 300);
	atomic_store(&trimming, true);
	TAP_CHECK(!pthread_create(&trimmer, NULL, trim_main, NULL));
	for (int t = 0; t < NTHREADS; t++)
		TAP_CHECK(!pthread_create(&th[t], NULL, req_main, &rt[t]));
	for (int t = 0; t < NTHREADS; t++) {
		pthread_join(th[t], NULL);
		if (rt[t].failed)
			printf("# thread %d: %s\n", t, rt[t].err);
		failed += rt[t].failed;
		bad += rt[t].bad;
	}
	atomic_store(&trimming, false);
	pthread_join(trimmer, NULL);
	watchdog_disarm();
	TAP_CHECK(ag_gate_free(gate) == 0); /* every place came back */
	gate = NULL;
	TAP_CHECKF(failed == 0, "%ld requests failed", failed);
	TAP_CHECKF(bad == 0, "%ld answers differ from one thread's", bad);
	TAP_CHECK(atomic_load(&trims) > 0);
	/* input gradients only: no parameter got a .grad */
	for (int i = 0; i < 6; i++) {
		struct ag_tensor *g = ag_tensor_grad(p[i]);

		TAP_CHECKF(g == NULL, "parameter %d has a .grad", i);
	}
	for (int i = 0; i < 6; i++)
		ag_tensor_put(p[i]);
	TAP_CHECKF(ag__live_tensors() == 0 && ag__live_nodes() == 0 &&
			   ag__live_storages() == 0,
		   "live: %ld tensors, %ld nodes, %ld storages",
		   ag__live_tensors(), ag__live_nodes(), ag__live_storages());
	TAP_CHECKF(ag_k_gemm_packs_live() == 0, "%ld packs live",
		   ag_k_gemm_packs_live());
	return 0;
}

static int test_request_threads_answer_as_one(void)
{
	return answer_as_one(false, false);
}

static int test_packed_weights_answer_as_one(void)
{
	return answer_as_one(true, false);
}

static int test_gated_threads_answer_as_one(void)
{
	return answer_as_one(true, true);
}

static const struct tap_test tests[] = {
	TAP_TEST(test_request_threads_answer_as_one),
	TAP_TEST(test_packed_weights_answer_as_one),
	TAP_TEST(test_gated_threads_answer_as_one),
	{ 0 },
};

int main(void)
{
	return tap_run(tests);
}
