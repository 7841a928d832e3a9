// SPDX-License-Identifier: MIT
/*
 * The small-span path (small.h) against every ISA path's kernels, bit for
 * bit, on every length it takes, strided and in place, with random bit
 * patterns (NaN, infinities, subnormals, signed zeros) and ordinary values;
 * and the cases it must leave to the kernels.
 */
#include <criterion/criterion.h>

#include "common.h"
#include "small.h"

#define NV 4096 /* inputs per op and ISA */

static const enum ag_k_unary small_fwd[] = { AG_K_NEG, AG_K_ADD_SCALAR,
					     AG_K_MUL_SCALAR,
					     AG_K_RSUB_SCALAR };
static const enum ag_k_unary small_bwd[] = { AG_K_NEG,	      AG_K_RSUB_SCALAR,
					     AG_K_ADD_SCALAR, AG_K_MUL_SCALAR,
					     AG_K_EXP,	      AG_K_TANH,
					     AG_K_SIGMOID };
static const enum ag_k_binary small_bin[] = { AG_K_ADD, AG_K_SUB, AG_K_MUL,
					      AG_K_DIV };
#define LEN(a) (int)(sizeof(a) / sizeof((a)[0]))

/* half ordinary values, half any bit pattern */
#define FILL(T, S, r, buf, n)                                        \
	do {                                                         \
		for (int i_ = 0; i_ < (n); i_++)                     \
			(buf)[i_] = (rng_next(r) & 1) ?              \
					    (T)rng_range(r, -3, 3) : \
					    (T)rng_bits_##S(r);      \
	} while (0)

#define SAME(T, a, b) (memcmp(&(a), &(b), sizeof(T)) == 0)

#define DEFINE_CHECKS(T, S)                                                    \
	static void check_##S(const struct ag_k_isa *k, int isa)               \
	{                                                                      \
		struct rng r = { 42 };                                         \
		struct ag_k_params p = { 0.001, 0 };                           \
		T g[2 * AG_K_SMALL_MAX], x[2 * AG_K_SMALL_MAX];                \
		T y[2 * AG_K_SMALL_MAX], want[2 * AG_K_SMALL_MAX];             \
		T got[2 * AG_K_SMALL_MAX];                                     \
                                                                               \
		for (int it = 0; it < NV / AG_K_SMALL_MAX; it++) {             \
			int n = 1 + it % AG_K_SMALL_MAX, inc = 1 + it % 2;     \
                                                                               \
			FILL(T, S, &r, g, 2 * AG_K_SMALL_MAX);                 \
			FILL(T, S, &r, x, 2 * AG_K_SMALL_MAX);                 \
			FILL(T, S, &r, y, 2 * AG_K_SMALL_MAX);                 \
			p.p0 = rng_range(&r, -4, 4);                           \
			for (int o = 0; o < LEN(small_fwd); o++) {             \
				memcpy(want, y, sizeof(y));                    \
				memcpy(got, y, sizeof(y));                     \
				k->unary_##S(small_fwd[o], n, x, inc, want,    \
					     inc, &p);                         \
				cr_assert(ag_k_small_unary_##S(small_fwd[o],   \
							       n, x, inc, got, \
							       inc, &p));      \
				for (int i = 0; i < 2 * AG_K_SMALL_MAX; i++)   \
					cr_assert(SAME(T, got[i], want[i]),    \
						  "%s " #S                     \
						  " unary op %d n %d inc %d: " \
						  "[%d] %a vs %a",             \
						  test_isa_names[isa],         \
						  small_fwd[o], n, inc, i,     \
						  (double)got[i],              \
						  (double)want[i]);            \
			}                                                      \
			for (int o = 0; o < LEN(small_bwd); o++) {             \
				memcpy(want, x, sizeof(x));                    \
				memcpy(got, x, sizeof(x));                     \
				k->unary_bwd_##S(small_bwd[o], n, g, inc, x,   \
						 inc, y, inc, want, inc, &p);  \
				cr_assert(ag_k_small_unary_bwd_##S(            \
					small_bwd[o], n, g, inc, y, inc, got,  \
					inc, &p));                             \
				for (int i = 0; i < 2 * AG_K_SMALL_MAX; i++)   \
					cr_assert(SAME(T, got[i], want[i]),    \
						  "%s " #S                     \
						  " unary bwd op %d n %d: "    \
						  "[%d] %a vs %a",             \
						  test_isa_names[isa],         \
						  small_bwd[o], n, i,          \
						  (double)got[i],              \
						  (double)want[i]);            \
			}                                                      \
			for (int o = 0; o < LEN(small_bin); o++) {             \
				memcpy(want, g, sizeof(g));                    \
				memcpy(got, g, sizeof(g));                     \
				/* in place into a, as gradient sums run */    \
				k->binary_##S(small_bin[o], n, want, inc, x,   \
					      inc, want, inc);                 \
				cr_assert(ag_k_small_binary_##S(               \
					small_bin[o], n, got, inc, x, inc,     \
					got, inc));                            \
				for (int i = 0; i < 2 * AG_K_SMALL_MAX; i++)   \
					cr_assert(SAME(T, got[i], want[i]),    \
						  "%s " #S                     \
						  " binary op %d n %d: "       \
						  "[%d] %a vs %a",             \
						  test_isa_names[isa],         \
						  small_bin[o], n, i,          \
						  (double)got[i],              \
						  (double)want[i]);            \
			}                                                      \
		}                                                              \
	}

DEFINE_CHECKS(float, f32)
DEFINE_CHECKS(double, f64)

Test(small, bitwise_equal_to_every_isa)
{
	int ran = 0;

	for (int i = 0; i < TEST_NISA; i++) {
		const struct ag_k_isa *k = test_isa(i);

		if (!k)
			continue;
		check_f32(k, i);
		check_f64(k, i);
		ran++;
	}
	cr_assert(ran >= 1, "no ISA path to compare with");
}

Test(small, leaves_the_rest_to_the_kernels)
{
	float a[AG_K_SMALL_MAX + 1] = { 1 }, b[AG_K_SMALL_MAX + 1] = { 2 };
	float y[AG_K_SMALL_MAX + 1] = { 7 };
	struct ag_k_params p = { 2, 0 };

	/* longer than the small path */
	cr_assert(!ag_k_small_binary_f32(AG_K_ADD, AG_K_SMALL_MAX + 1, a, 1, b,
					 1, y, 1));
	cr_assert(!ag_k_small_unary_f32(AG_K_NEG, AG_K_SMALL_MAX + 1, a, 1, y,
					1, &p));
	/* transcendental forwards, pow and friends: the kernels' bits */
	cr_assert(!ag_k_small_unary_f32(AG_K_TANH, 1, a, 1, y, 1, &p));
	cr_assert(!ag_k_small_unary_f32(AG_K_EXP, 1, a, 1, y, 1, &p));
	cr_assert(!ag_k_small_binary_f32(AG_K_POW, 1, a, 1, b, 1, y, 1));
	cr_assert(!ag_k_small_binary_f32(AG_K_MAXIMUM, 1, a, 1, b, 1, y, 1));
	cr_assert(!ag_k_small_unary_bwd_f32(AG_K_SIN, 1, a, 1, b, 1, y, 1, &p));
	/* a stride-0 output is a reduction, and tanh's needs the output */
	cr_assert(!ag_k_small_unary_bwd_f32(AG_K_NEG, 2, a, 1, b, 1, y, 0, &p));
	cr_assert(!ag_k_small_unary_bwd_f32(AG_K_TANH, 1, a, 1, NULL, 1, y, 1,
					    &p));
	cr_assert(!ag_k_small_binary_f32(AG_K_ADD, 2, a, 1, b, 1, y, 0));
	/* nothing written by a refusal */
	cr_assert_eq(y[0], 7);
}
