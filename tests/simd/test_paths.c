// SPDX-License-Identifier: MIT
/*
 * Every ISA path against the generic one on odd lengths (every tail
 * length), and each path's strided, negative-stride, broadcast and
 * in-place spans against its own contiguous results, bit for bit; writes
 * stay inside their spans (canaries around every buffer).
 */
#include <criterion/criterion.h>

#include "common.h"

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)

/* ULP two paths may differ by: twice the documented bound for kernels that
 * call SLEEF (each is within the bound of the truth), 0 for kernels made
 * of IEEE operations only (the generic path fuses its fmas too). */
static double unary_tol(enum ag_k_unary op, bool f32)
{
	switch (op) {
	case AG_K_EXP:
		return f32 ? 2 : 4;
	case AG_K_EXPM1:
	case AG_K_LOG:
	case AG_K_LOG1P:
	case AG_K_SIN:
	case AG_K_COS:
	case AG_K_TAN:
	case AG_K_ATAN:
	case AG_K_POW_SCALAR:
		return 2;
	case AG_K_TANH:
		return f32 ? 4 : 2.002;
	case AG_K_ERF:
		return f32 ? 3.6 : 2.4;
	case AG_K_SIGMOID:
		return 5;
	case AG_K_GELU:
	case AG_K_SILU:
		return 7;
	case AG_K_SOFTPLUS:
		return 4;
	default:
		return 0;
	}
}

/* derivative kernels that call SLEEF combine a few of its results */
static double unary_bwd_tol(enum ag_k_unary op)
{
	switch (op) {
	case AG_K_SIN:
	case AG_K_COS:
	case AG_K_GELU:
	case AG_K_SILU:
	case AG_K_SOFTPLUS:
	case AG_K_ERF:
	case AG_K_POW_SCALAR:
		return 8;
	default:
		return 0;
	}
}

#define T float
#define S f32
#define ULPB ulp_between_f32
#define EPS FLT_EPSILON
#include "paths_tmpl.h"
#undef T
#undef S
#undef ULPB
#undef EPS

#define T double
#define S f64
#define ULPB ulp_between_f64
#define EPS DBL_EPSILON
#include "paths_tmpl.h"
#undef T
#undef S
#undef ULPB
#undef EPS

static const int64_t lens[] = { 1,  2,	3,  5,	7,   8,	  15,  16,  17,	  31,
				33, 47, 63, 65, 127, 129, 511, 513, 1001, 1537 };
#define NLENS (sizeof(lens) / sizeof(lens[0]))

static const double pow_exps[] = { 0, 1, 2, 3, 0.5, -1, -2, -0.5, 1.7, -2.3 };

static void unary_all(enum ag_k_unary op)
{
	struct rng r = { 77 + (uint64_t)op };
	size_t l, e;
	int k;

	for (k = 0; k < TEST_NISA; k++) {
		const struct ag_k_isa *t = test_isa(k);

		if (!t)
			continue;
		for (l = 0; l < NLENS; l++) {
			for (e = 0; e < sizeof(pow_exps) / sizeof(pow_exps[0]);
			     e++) {
				struct ag_k_params p = { -0.5, 0.7 };

				if (op == AG_K_POW_SCALAR)
					p.p0 = pow_exps[e];
				else if (op == AG_K_LEAKY_RELU ||
					 op == AG_K_ADD_SCALAR ||
					 op == AG_K_MUL_SCALAR ||
					 op == AG_K_RSUB_SCALAR)
					p.p0 = 0.1 * (double)e - 0.3;
				else if (e > 0)
					break;
				unary_case_f32(t, op, &p, lens[l], &r);
				unary_case_f64(t, op, &p, lens[l], &r);
			}
		}
	}
}

static void binary_all(enum ag_k_binary op)
{
	struct rng r = { 991 + (uint64_t)op };
	size_t l;
	int k;

	for (k = 0; k < TEST_NISA; k++) {
		const struct ag_k_isa *t = test_isa(k);

		if (!t)
			continue;
		for (l = 0; l < NLENS; l++) {
			binary_case_f32(t, op, lens[l], &r);
			binary_case_f64(t, op, lens[l], &r);
		}
	}
}

Test(paths, unary, .timeout = 120)
{
	int op;

	for (op = 0; op < AG_K_UNARY_COUNT; op++)
		unary_all(op);
}

Test(paths, binary, .timeout = 120)
{
	int op;

	for (op = 0; op < AG_K_BINARY_COUNT; op++)
		binary_all(op);
}

/* 9 MiB outputs, past the streaming threshold (4 MiB), odd lengths, every
 * offset from a 64-byte boundary a vector's worth of each type can have. */
Test(paths, binary_stream, .timeout = 120)
{
	static const enum ag_k_binary ops[] = { AG_K_ADD, AG_K_MUL,
						AG_K_MAXIMUM };
	struct rng r = { 4242 };
	int64_t off;
	size_t o;
	int k;

	for (k = 0; k < TEST_NISA; k++) {
		const struct ag_k_isa *t = test_isa(k);

		if (!t)
			continue;
		for (o = 0; o < sizeof(ops) / sizeof(ops[0]); o++) {
			for (off = 0; off < 16; off += 1 + off / 2)
				binary_stream_case_f32(
					t, ops[o], (9 << 20) / 4 + 13, off, &r);
			for (off = 0; off < 8; off++)
				binary_stream_case_f64(
					t, ops[o], (9 << 20) / 8 + 5, off, &r);
		}
	}
}

Test(paths, dispatch)
{
	const char *name = ag_k_isa_name();

	cr_assert(ag_k_isa_current() != NULL);
	cr_assert(ag_k_isa_by_name(name) == ag_k_isa_current());
	cr_assert(ag_k_isa_by_name("generic") != NULL);
	cr_assert(ag_k_isa_by_name("sse9") == NULL);
}
