/* SPDX-License-Identifier: MIT */
#ifndef AG_TEST_SIMD_COMMON_H
#define AG_TEST_SIMD_COMMON_H

/*
 * Helpers shared by the simd suites: the ISA paths this CPU runs, a
 * seedable generator, ULP distances against long double references, and
 * the input counts (fewer under sanitizers, which slow SLEEF and libm
 * many times over).
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "isa.h"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_UNDEFINED__)
#define AG_TEST_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || \
	__has_feature(undefined_behavior_sanitizer)
#define AG_TEST_SANITIZED 1
#endif
#endif

/* Inputs per accuracy test: >= 1M normally; AG_TEST_QUICK=1 or a sanitizer
 * build runs 64K so the suite stays under a minute there. */
static inline int64_t test_inputs(void)
{
	const char *q = getenv("AG_TEST_QUICK");

#ifdef AG_TEST_SANITIZED
	(void)q;
	return 1 << 16;
#else
	if (q && *q && strcmp(q, "0"))
		return 1 << 16;
	return 1 << 20;
#endif
}

static const char *const test_isa_names[] = { "generic", "avx2", "avx512" };
#define TEST_NISA 3

/* The i-th ISA path if this build and CPU run it, else NULL. */
static inline const struct ag_k_isa *test_isa(int i)
{
	return ag_k_isa_by_name(test_isa_names[i]);
}

struct rng {
	uint64_t s;
};

static inline uint64_t rng_next(struct rng *r)
{
	/* splitmix64 */
	uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* uniform in [0, 1) */
static inline double rng_unit(struct rng *r)
{
	return (double)(rng_next(r) >> 11) * 0x1p-53;
}

static inline double rng_range(struct rng *r, double lo, double hi)
{
	return lo + (hi - lo) * rng_unit(r);
}

static inline float rng_bits_f32(struct rng *r)
{
	uint32_t u = (uint32_t)rng_next(r);
	float f;

	memcpy(&f, &u, sizeof(f));
	return f;
}

static inline double rng_bits_f64(struct rng *r)
{
	uint64_t u = rng_next(r);
	double d;

	memcpy(&d, &u, sizeof(d));
	return d;
}

/*
 * Distance of got from the exact value ref in units of the last place of
 * the format (mant bits incl. the implicit one, emin the exponent of the
 * smallest subnormal, big = 2^(emax+1) standing in for inf).  NaN must meet
 * NaN, inf must meet the same inf; any mismatch is infinitely far.
 */
static inline double ulp_dist(long double got, long double ref, int mant,
			      int emin, long double big)
{
	long double u;
	int e;

	if (isnan(ref) || isnan(got))
		return isnan(ref) && isnan(got) ? 0 : INFINITY;
	if (isinf(ref) && isinf(got))
		return signbit(ref) == signbit(got) ? 0 : INFINITY;
	/* A finite ref at or past the format's overflow threshold (the
	 * largest finite value plus half its ulp) rounds to inf. */
	if (isinf(got))
		got = copysignl(big, got);
	if (isinf(ref) || fabsl(ref) >= big - ldexpl(big, -mant - 1))
		ref = copysignl(big, ref);
	if (ref == 0) {
		e = emin;
	} else {
		frexpl(ref, &e);
		e -= mant;
		if (e < emin)
			e = emin;
	}
	u = ldexpl(1.0L, e);
	return (double)(fabsl(got - ref) / u);
}

static inline double ulp_f32(float got, long double ref)
{
	return ulp_dist(got, ref, 24, -149, 0x1p128L);
}

static inline double ulp_f64(double got, long double ref)
{
	return ulp_dist(got, ref, 53, -1074, 0x1p1024L);
}

/* ULP distance between two results of the same format */
static inline double ulp_between_f32(float a, float b)
{
	return ulp_f32(a, (long double)b);
}

static inline double ulp_between_f64(double a, double b)
{
	return ulp_f64(a, (long double)b);
}

#endif /* AG_TEST_SIMD_COMMON_H */
