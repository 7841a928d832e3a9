// SPDX-License-Identifier: MIT
/*
 * The generator.  ag/tensor.h documents the algorithm (SplitMix64 seeding
 * xoshiro256**), so the raw outputs are checked against a reference
 * written here from the published definitions (Steele, Lea and Flood,
 * "Fast splittable pseudorandom number generators", 2014; Blackman and
 * Vigna, "Scrambled linear pseudorandom number generators", 2018), and
 * against constants computed independently of both.
 */
#include <math.h>
#include <string.h>

#include "common.h"

/* ---- the reference ---- */

struct ref_rng {
	uint64_t a, b, c, d;
};

/* SplitMix64: a Weyl sequence by the golden gamma, then a mix. */
static uint64_t ref_splitmix(uint64_t *state)
{
	uint64_t z;

	*state += UINT64_C(0x9E3779B97F4A7C15);
	z = *state;
	z ^= z >> 30;
	z *= UINT64_C(0xBF58476D1CE4E5B9);
	z ^= z >> 27;
	z *= UINT64_C(0x94D049BB133111EB);
	z ^= z >> 31;
	return z;
}

static void ref_seed(struct ref_rng *r, uint64_t seed)
{
	r->a = ref_splitmix(&seed);
	r->b = ref_splitmix(&seed);
	r->c = ref_splitmix(&seed);
	r->d = ref_splitmix(&seed);
}

static uint64_t ref_rotl(uint64_t v, unsigned int k)
{
	return (v << k) | (v >> (64 - k));
}

/* xoshiro256**: output scrambler "**" on the second word, then the
 * xorshift-rotate linear step. */
static uint64_t ref_next(struct ref_rng *r)
{
	uint64_t out = ref_rotl(r->b * 5, 7) * 9;
	uint64_t shifted = r->b << 17;

	r->c ^= r->a;
	r->d ^= r->b;
	r->b ^= r->c;
	r->a ^= r->d;
	r->c ^= shifted;
	r->d = ref_rotl(r->d, 45);
	return out;
}

Test(rng, splitmix_published_values)
{
	/* the first SplitMix64 outputs for seed 0, as published */
	const uint64_t want[4] = {
		UINT64_C(0xe220a8397b1dcdaf),
		UINT64_C(0x6e789e6aa1b965f4),
		UINT64_C(0x06c45d188009454f),
		UINT64_C(0xf88bb8a8724c81ec),
	};
	uint64_t x = 0;

	for (int i = 0; i < 4; i++)
		cr_assert_eq(ref_splitmix(&x), want[i]);
	AG_ASSERT_NO_LEAKS();
}

Test(rng, first_outputs_seed_0)
{
	/* computed with an independent (Python) implementation */
	const uint64_t want[4] = {
		UINT64_C(0x99ec5f36cb75f2b4),
		UINT64_C(0xbf6e1f784956452a),
		UINT64_C(0x1a5f849d4933e6e0),
		UINT64_C(0x6aa594f1262d2d2c),
	};
	struct ag_generator *g = ag_generator_new(0);
	struct ref_rng r;

	ref_seed(&r, 0);
	for (int i = 0; i < 4; i++) {
		uint64_t got = ag_generator_next(g);

		cr_assert_eq(got, want[i], "output %d: %016llx", i,
			     (unsigned long long)got);
		cr_assert_eq(ref_next(&r), want[i]);
	}
	ag_generator_free(g);
	AG_ASSERT_NO_LEAKS();
}

Test(rng, matches_reference_for_many_seeds)
{
	const uint64_t seeds[] = { 1, 42, 0xdeadbeef, UINT64_MAX };

	for (size_t k = 0; k < sizeof(seeds) / sizeof(seeds[0]); k++) {
		struct ag_generator *g = ag_generator_new(seeds[k]);
		struct ref_rng r;

		ref_seed(&r, seeds[k]);
		for (int i = 0; i < 1000; i++)
			cr_assert_eq(ag_generator_next(g), ref_next(&r),
				     "seed %llx output %d",
				     (unsigned long long)seeds[k], i);
		ag_generator_free(g);
	}
	AG_ASSERT_NO_LEAKS();
}

Test(rng, same_seed_same_tensors)
{
	int64_t shape[2] = { 7, 5 };
	struct ag_generator *g1 = ag_generator_new(1234);
	struct ag_generator *g2 = ag_generator_new(1234);
	struct ag_generator *g3 = ag_generator_new(1235);
	struct ag_tensor *a = ag_randn(g1, AG_F32, 2, shape);
	struct ag_tensor *b = ag_randn(g2, AG_F32, 2, shape);
	struct ag_tensor *c = ag_randn(g3, AG_F32, 2, shape);
	struct ag_tensor *a2 = ag_rand(g1, AG_F64, 2, shape);
	struct ag_tensor *b2 = ag_rand(g2, AG_F64, 2, shape);

	cr_assert(ag_equal(a, b));
	cr_assert(ag_equal(a2, b2));
	cr_assert_not(ag_equal(a, c));
	cr_assert_not(ag_equal(a2, a));
	ag_tensor_put(a);
	ag_tensor_put(b);
	ag_tensor_put(c);
	ag_tensor_put(a2);
	ag_tensor_put(b2);
	ag_generator_free(g1);
	ag_generator_free(g2);
	ag_generator_free(g3);
	AG_ASSERT_NO_LEAKS();
}

Test(rng, rand_bits_to_floats)
{
	int64_t n = 64;
	struct ag_generator *g = ag_generator_new(7);
	struct ag_tensor *d = ag_rand(g, AG_F64, 1, &n);
	struct ag_tensor *f = ag_rand(g, AG_F32, 1, &n);
	const double *dp = ag_tensor_data(d);
	const float *fp = ag_tensor_data(f);
	struct ref_rng r;

	ref_seed(&r, 7);
	for (int i = 0; i < n; i++)
		cr_assert_eq(dp[i], ldexp((double)(ref_next(&r) >> 11), -53));
	for (int i = 0; i < n; i++)
		cr_assert_eq(fp[i],
			     (float)ldexp((double)(ref_next(&r) >> 40), -24));
	ag_tensor_put(d);
	ag_tensor_put(f);
	ag_generator_free(g);
	AG_ASSERT_NO_LEAKS();
}

Test(rng, randn_box_muller)
{
	int64_t n = 16;
	struct ag_generator *g = ag_generator_new(99);
	struct ag_tensor *t = ag_randn(g, AG_F64, 1, &n);
	const double *p = ag_tensor_data(t);
	struct ref_rng r;

	ref_seed(&r, 99);
	for (int i = 0; i < n; i++) {
		double u1 = ldexp((double)(ref_next(&r) >> 11), -53);
		double u2 = ldexp((double)(ref_next(&r) >> 11), -53);
		double z = sqrt(-2 * log(1 - u1)) * cos(2 * M_PI * u2);

		cr_assert_float_eq(p[i], z, 1e-12, "%d: %g vs %g", i, p[i], z);
	}
	ag_tensor_put(t);
	ag_generator_free(g);
	AG_ASSERT_NO_LEAKS();
}

static void moments(struct ag_tensor *t, double *mean, double *var, double *lo,
		    double *hi)
{
	int64_t n = ag_tensor_numel(t);
	double s = 0, s2 = 0;

	*lo = INFINITY;
	*hi = -INFINITY;
	for (int64_t i = 0; i < n; i++) {
		double v = ag__get(t, i);

		s += v;
		*lo = fmin(*lo, v);
		*hi = fmax(*hi, v);
	}
	*mean = s / (double)n;
	for (int64_t i = 0; i < n; i++) {
		double v = ag__get(t, i) - *mean;

		s2 += v * v;
	}
	*var = s2 / (double)(n - 1);
}

Test(rng, rand_uniform_sanity)
{
	int64_t n = 100000;
	enum ag_dtype dts[2] = { AG_F32, AG_F64 };
	struct ag_generator *g = ag_generator_new(2024);

	for (int k = 0; k < 2; k++) {
		struct ag_tensor *t = ag_rand(g, dts[k], 1, &n);
		double mean, var, lo, hi;

		moments(t, &mean, &var, &lo, &hi);
		cr_assert_geq(lo, 0.0);
		cr_assert_lt(hi, 1.0);
		cr_assert_lt(lo, 1e-3);
		cr_assert_gt(hi, 1 - 1e-3);
		/* sd of the mean is 0.0009: 6 sigma */
		cr_assert_lt(fabs(mean - 0.5), 0.0055, "mean %g", mean);
		cr_assert_lt(fabs(var - 1.0 / 12), 0.003, "var %g", var);
		ag_tensor_put(t);
	}
	ag_generator_free(g);
	AG_ASSERT_NO_LEAKS();
}

Test(rng, randn_normal_sanity)
{
	int64_t n = 100000;
	enum ag_dtype dts[2] = { AG_F32, AG_F64 };
	struct ag_generator *g = ag_generator_new(5);

	for (int k = 0; k < 2; k++) {
		struct ag_tensor *t = ag_randn(g, dts[k], 1, &n);
		double mean, var, lo, hi;
		int64_t within1 = 0;

		moments(t, &mean, &var, &lo, &hi);
		for (int64_t i = 0; i < n; i++)
			within1 += fabs(ag__get(t, i)) < 1;
		/* sd of the mean 0.0032, of the variance 0.0045 */
		cr_assert_lt(fabs(mean), 0.02, "mean %g", mean);
		cr_assert_lt(fabs(var - 1), 0.03, "var %g", var);
		cr_assert(isfinite(lo) && isfinite(hi));
		cr_assert_lt(lo, -3.5);
		cr_assert_gt(hi, 3.5);
		/* P(|z| < 1) = 0.6827, sd 0.0015 */
		cr_assert_lt(fabs((double)within1 / (double)n - 0.6827), 0.01);
		ag_tensor_put(t);
	}
	ag_generator_free(g);
	AG_ASSERT_NO_LEAKS();
}

Test(rng, bad_inputs)
{
	int64_t n = 3;
	struct ag_generator *g = ag_generator_new(0);

	cr_assert_null(ag_rand(g, AG_I64, 1, &n));
	AG_ASSERT_ERR(AG_EDTYPE,
		      "ag_rand: random values need a floating dtype");
	cr_assert_null(ag_randn(g, AG_I64, 1, &n));
	AG_ASSERT_ERR(AG_EDTYPE, "ag_randn");
	cr_assert_null(ag_randn(NULL, AG_F32, 1, &n));
	AG_ASSERT_ERR(AG_EINVAL, "ag_randn: generator is NULL");
	cr_assert_null(ag_rand(g, AG_F32, 9, &n));
	AG_ASSERT_ERR(AG_EINVAL, "ag_rand: 9 dims requested");
	ag_generator_free(g);
	ag_generator_free(NULL);
	AG_ASSERT_NO_LEAKS();
}

Test(rng, zero_d_and_empty)
{
	int64_t zero = 0;
	struct ag_generator *g = ag_generator_new(0);
	struct ag_tensor *s = ag_rand(g, AG_F64, 0, NULL);
	struct ag_tensor *e = ag_randn(g, AG_F64, 1, &zero);
	struct ref_rng r;

	ref_seed(&r, 0);
	cr_assert_eq(ag_tensor_item(s),
		     ldexp((double)(ref_next(&r) >> 11), -53));
	cr_assert_eq(ag_tensor_numel(e), 0);
	/* an empty tensor draws nothing */
	cr_assert_eq(ag_generator_next(g), ref_next(&r));
	ag_tensor_put(s);
	ag_tensor_put(e);
	ag_generator_free(g);
	AG_ASSERT_NO_LEAKS();
}

Test(rng, state_round_trip_resumes_the_stream)
{
	struct ag_generator *g = ag_generator_new(42), *h = ag_generator_new(7);
	uint64_t st[AG_GENERATOR_STATE_WORDS], want[8];
	struct ref_rng r;

	for (int i = 0; i < 3; i++)
		ag_generator_next(g);
	cr_assert_eq(ag_generator_get_state(g, st), 0);
	/* the state is the four reference words after three draws */
	ref_seed(&r, 42);
	for (int i = 0; i < 3; i++)
		ref_next(&r);
	cr_assert(st[0] == r.a && st[1] == r.b && st[2] == r.c && st[3] == r.d);
	for (int i = 0; i < 8; i++)
		want[i] = ag_generator_next(g);
	cr_assert_eq(ag_generator_set_state(h, st), 0);
	for (int i = 0; i < 8; i++)
		cr_assert_eq(ag_generator_next(h), want[i], "draw %d", i);
	ag_generator_free(g);
	ag_generator_free(h);
	AG_ASSERT_NO_LEAKS();
}

Test(rng, state_bad_arguments_change_nothing)
{
	struct ag_generator *g = ag_generator_new(5);
	uint64_t st[AG_GENERATOR_STATE_WORDS], zero[4] = { 0 }, after[4];

	cr_assert_eq(ag_generator_get_state(NULL, st), -AG_EINVAL);
	cr_assert(strstr(ag_errmsg(), "generator is NULL"));
	cr_assert_eq(ag_generator_get_state(g, NULL), -AG_EINVAL);
	cr_assert_eq(ag_generator_set_state(NULL, st), -AG_EINVAL);
	cr_assert_eq(ag_generator_get_state(g, st), 0);
	cr_assert_eq(ag_generator_set_state(g, zero), -AG_EINVAL);
	cr_assert(strstr(ag_errmsg(), "all-zero"), "%s", ag_errmsg());
	cr_assert_eq(ag_generator_get_state(g, after), 0);
	cr_assert_eq(memcmp(st, after, sizeof(st)), 0);
	ag_generator_free(g);
	AG_ASSERT_NO_LEAKS();
}

Test(rng, default_generator_is_what_null_draws_from)
{
	struct ag_generator *ref = ag_generator_new(1234);
	struct ag_generator *d;
	uint64_t st[AG_GENERATOR_STATE_WORDS], rst[4];

	ag_manual_seed(1234);
	d = ag_default_generator();
	cr_assert_not_null(d);
	cr_assert_eq(ag_generator_get_state(d, st), 0);
	cr_assert_eq(ag_generator_get_state(ref, rst), 0);
	cr_assert_eq(memcmp(st, rst, sizeof(st)), 0, "reseeded from 1234");
	/* a draw moves it; reseeding restarts it */
	ag_generator_next(d);
	ag_manual_seed(1234);
	cr_assert_eq(ag_generator_get_state(ag_default_generator(), st), 0);
	cr_assert_eq(memcmp(st, rst, sizeof(st)), 0);
	ag_generator_free(ref);
	AG_ASSERT_NO_LEAKS();
}
