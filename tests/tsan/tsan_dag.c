// SPDX-License-Identifier: MIT
/*
 * Random DAGs of custom functions on the pool: every node's backward runs
 * exactly once, and only after the backward of every node that consumed
 * its output, with 1, 2 and 16 workers (16 oversubscribes the machine).
 */
#include <stdatomic.h>
#include <string.h>

#include <ag/ag.h>
#include <ag/pool.h>

#include "tap.h"
#include "internal.h"

#define NODES 200
#define MAXIN 3

struct dag {
	int nin[NODES];
	int in[NODES][MAXIN]; /* earlier node ids; -1: the leaf */
	atomic_int runs[NODES];
	atomic_long stamp[NODES];
	atomic_long clock;
};

struct call {
	struct dag *d;
	int id;
};

/* out = 0.5 * sum of inputs */
static int mix_fwd(struct ag_ctx *ctx, struct ag_tensor *const *in, int nin,
		   struct ag_tensor **out, int nout)
{
	struct ag_tensor *acc = ag_tensor_get(in[0]), *t;

	(void)ctx;
	(void)nout;
	for (int i = 1; i < nin; i++) {
		t = ag_add(acc, in[i]);
		ag_tensor_put(acc);
		acc = t;
	}
	out[0] = ag_mul_scalar(acc, 0.5);
	ag_tensor_put(acc);
	return out[0] ? 0 : -ag_errcode();
}

static int mix_bwd(struct ag_ctx *ctx, struct ag_tensor *const *g, int nout,
		   struct ag_tensor **gi, int nin)
{
	struct call *c = ag_ctx_arg(ctx);
	struct dag *d = c->d;

	(void)nout;
	atomic_fetch_add(&d->runs[c->id], 1);
	atomic_store(&d->stamp[c->id], atomic_fetch_add(&d->clock, 1));
	for (int i = 0; i < nin; i++)
		gi[i] = ag_mul_scalar(g[0], 0.5);
	return 0;
}

static const struct ag_function_ops mix = {
	.name = "Mix",
	.forward = mix_fwd,
	.backward = mix_bwd,
};

static uint64_t rnd(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static int run_dag(int threads, uint64_t seed)
{
	static struct dag d;
	static struct call calls[NODES];
	struct ag_tensor *out[NODES], *x, *loss = NULL;
	struct ag_scope *s;
	int64_t n = 4;
	bool used[NODES] = { false };
	int rc;

	TAP_CHECK(ag_set_num_threads(threads) == 0);
	memset(&d, 0, sizeof(d));
	x = ag_ones(AG_F64, 1, &n); /* outlives the scope */
	ag_tensor_set_requires_grad(x, true);
	s = ag_scope_begin();
	for (int v = 0; v < NODES; v++) {
		struct ag_tensor *in[MAXIN];

		d.nin[v] = 1 + (int)(rnd(&seed) % MAXIN);
		for (int i = 0; i < d.nin[v]; i++) {
			int u = v ? (int)(rnd(&seed) % (uint64_t)(v + 1)) - 1 :
				    -1;

			d.in[v][i] = u;
			in[i] = u < 0 ? x : out[u];
			if (u >= 0)
				used[u] = true;
		}
		calls[v] = (struct call){ &d, v };
		TAP_CHECK(ag_function_apply(&mix, in, d.nin[v], &out[v], 1,
					    &calls[v]) == 0);
	}
	/* every node reaches the loss: sum the ones nothing consumed */
	for (int v = 0; v < NODES; v++) {
		if (used[v])
			continue;
		loss = loss ? ag_add(loss, ag_sum(out[v])) : ag_sum(out[v]);
	}
	rc = ag_backward(loss, NULL, NULL);
	ag_scope_end(s);
	ag_tensor_put(x);
	TAP_CHECKF(rc == 0, "%s", ag_errmsg());
	for (int v = 0; v < NODES; v++) {
		TAP_CHECKF(atomic_load(&d.runs[v]) == 1, "node %d ran %d times",
			   v, atomic_load(&d.runs[v]));
		for (int i = 0; i < d.nin[v]; i++) {
			int u = d.in[v][i];

			TAP_CHECKF(u < 0 || atomic_load(&d.stamp[u]) >
						    atomic_load(&d.stamp[v]),
				   "node %d ran before its consumer %d", u, v);
		}
	}
	TAP_CHECK(ag__live_nodes() == 0 && ag__live_tensors() == 0);
	return 0;
}

static int test_dag_1_worker(void)
{
	return run_dag(1, 0x1234567);
}

static int test_dag_2_workers(void)
{
	for (uint64_t s = 1; s <= 5; s++)
		if (run_dag(2, 0x9e3779b97f4a7c15ULL * s))
			return 1;
	return 0;
}

static int test_dag_16_workers(void)
{
	for (uint64_t s = 1; s <= 5; s++)
		if (run_dag(16, 0xbf58476d1ce4e5b9ULL * s))
			return 1;
	ag_set_num_threads(0);
	return 0;
}

static const struct tap_test tests[] = {
	TAP_TEST(test_dag_1_worker),
	TAP_TEST(test_dag_2_workers),
	TAP_TEST(test_dag_16_workers),
	{ 0 },
};

int main(void)
{
	return tap_run(tests);
}
