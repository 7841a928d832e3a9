// SPDX-License-Identifier: MIT
/*
 * The kernels of single ops (simd/kern_ops.h) on every ISA path this CPU
 * runs, bit for bit against plain reference loops written here: the
 * vector loops of the wide paths and the plain loops of the generic one
 * must give the bits the ops gave before they moved to simd/.
 */
#include <criterion/criterion.h>

#include "common.h"

static bool same_f32(float a, float b)
{
	return !memcmp(&a, &b, sizeof(a));
}

static bool same_f64(double a, double b)
{
	return !memcmp(&a, &b, sizeof(a));
}

/*
 * The same bits, or both NaN: where two NaNs meet (inf - inf gives the
 * default NaN, which has the sign bit set on x86), which one comes out
 * depends on the operand order, and compilers swap the operands of
 * commutative operations.
 */
static bool same_nan_f32(float a, float b)
{
	return same_f32(a, b) || (isnan(a) && isnan(b));
}

static bool same_nan_f64(double a, double b)
{
	return same_f64(a, b) || (isnan(a) && isnan(b));
}

/* few distinct values, so windows tie; -0, NaN and inf among them */
static double pool_value(struct rng *r)
{
	static const double v[] = { -1, 0, -0.0, 1, 2, 2, NAN, INFINITY, -3 };
	uint64_t i = rng_next(r) % (sizeof(v) / sizeof(v[0]) + 2);

	return i < sizeof(v) / sizeof(v[0]) ? v[i] : rng_range(r, -4, 4);
}

/* torch's window max: first largest of (0,0) (0,1) (1,0) (1,1), last NaN */
static void ref_max2(int64_t oh, int64_t ow, const double *x, int64_t ldx,
		     int64_t w, double *y, int64_t *idx)
{
	for (int64_t oy = 0; oy < oh; oy++) {
		for (int64_t ox = 0; ox < ow; ox++) {
			const double *s = x + 2 * oy * ldx + 2 * ox;
			int64_t at = 2 * oy * w + 2 * ox, best = at;
			double m = s[0];
			const double v[3] = { s[1], s[ldx], s[ldx + 1] };
			const int64_t a[3] = { at + 1, at + w, at + w + 1 };

			for (int j = 0; j < 3; j++) {
				if (v[j] > m || isnan(v[j])) {
					m = v[j];
					best = a[j];
				}
			}
			y[oy * ow + ox] = m;
			idx[oy * ow + ox] = best;
		}
	}
}

#define CANARY 0x5a5a5a5a5a5a5a5all

#define POOL_CASE(T, S)                                                        \
	static void pool_case_##S(const struct ag_k_isa *k, int64_t h,         \
				  int64_t w, struct rng *r)                    \
	{                                                                      \
		int64_t oh = h / 2, ow = w / 2, ldx = w + 3, n = oh * ow;      \
		T *x = calloc((size_t)(h * ldx + 1), sizeof(T));               \
		double *xd = calloc((size_t)(h * ldx + 1), sizeof(double));    \
		double *yd = calloc((size_t)n + 1, sizeof(double));            \
		T *y = calloc((size_t)n + 1, sizeof(T));                       \
		T *y2 = calloc((size_t)n + 1, sizeof(T));                      \
		T *g = calloc((size_t)n + 1, sizeof(T));                       \
		T *dx = calloc((size_t)(h * w) + 1, sizeof(T));                \
		int64_t *ri = calloc((size_t)n + 1, sizeof(int64_t));          \
		int64_t *idx = calloc((size_t)n + 1, sizeof(int64_t));         \
                                                                               \
		cr_assert(x &&xd &&yd &&y &&y2 &&g &&dx &&ri &&idx);           \
		for (int64_t i = 0; i < h * ldx; i++)                          \
			xd[i] = x[i] = (T)pool_value(r);                       \
		ref_max2(oh, ow, xd, ldx, w, yd, ri);                          \
		memset(y, 0x5a, (size_t)(n + 1) * sizeof(T));                  \
		memset(y2, 0x5a, (size_t)(n + 1) * sizeof(T));                 \
		memset(idx, 0x5a, (size_t)(n + 1) * sizeof(int64_t));          \
		k->maxpool2_##S(oh, ow, x, ldx, w, y, idx);                    \
		k->maxpool2_##S(oh, ow, x, ldx, w, y2, NULL);                  \
		for (int64_t i = 0; i < n; i++) {                              \
			cr_assert(same_##S(y[i], (T)yd[i]) && idx[i] == ri[i], \
				  "%s maxpool2_" #S                            \
				  " %ldx%ld at %ld: %g@%ld, "                  \
				  "want %g@%ld",                               \
				  k->name, (long)h, (long)w, (long)i,          \
				  (double)y[i], (long)idx[i], yd[i],           \
				  (long)ri[i]);                                \
			cr_assert(same_##S(y2[i], y[i]));                      \
		}                                                              \
		cr_assert((uint64_t)idx[n] == CANARY, "idx written past n");   \
		for (int64_t i = 0; i < n; i++)                                \
			g[i] = (T)pool_value(r);                               \
		for (int64_t i = 0; i <= h * w; i++)                           \
			dx[i] = (T)NAN; /* every element must be written */    \
		k->maxpool2_bwd_##S(h, w, g, idx, dx);                         \
		for (int64_t i = 0; i < h * w; i++) {                          \
			T want = 0;                                            \
                                                                               \
			for (int64_t o = 0; o < n; o++)                        \
				if (idx[o] == i)                               \
					want = g[o] + 0;                       \
			cr_assert(same_##S(dx[i], want),                       \
				  "%s maxpool2_bwd_" #S                        \
				  " %ldx%ld at %ld: %g, "                      \
				  "want %g",                                   \
				  k->name, (long)h, (long)w, (long)i,          \
				  (double)dx[i], (double)want);                \
		}                                                              \
		cr_assert(isnan(dx[h * w]), "dx written past h w");            \
		free(x);                                                       \
		free(xd);                                                      \
		free(yd);                                                      \
		free(y);                                                       \
		free(y2);                                                      \
		free(g);                                                       \
		free(dx);                                                      \
		free(ri);                                                      \
		free(idx);                                                     \
	}

POOL_CASE(float, f32)
POOL_CASE(double, f64)

/*
 * Odd heights and widths; widths around the vector paths' steps: up to 8
 * windows (AVX-512 takes two rows a step), then steps of 8 (AVX2) and 16
 * (AVX-512) windows with every tail, and several steps a row.
 */
Test(ops, maxpool2)
{
	static const int64_t wide[] = { 30, 31, 32, 33, 34, 35, 46, 47, 48,
					49, 62, 63, 64, 65, 66, 67, 78, 97 };
	struct rng r = { 4242 };

	for (int k = 0; k < TEST_NISA; k++) {
		const struct ag_k_isa *t = test_isa(k);

		if (!t)
			continue;
		for (int64_t h = 1; h <= 7; h++) {
			for (int64_t w = 1; w <= 21; w++) {
				pool_case_f32(t, h, w, &r);
				pool_case_f64(t, h, w, &r);
			}
			for (size_t i = 0; i < sizeof(wide) / sizeof(wide[0]);
			     i++) {
				pool_case_f32(t, h, wide[i], &r);
				pool_case_f64(t, h, wide[i], &r);
			}
		}
	}
}

/*
 * Batch norm's runs: 3 runs of len elements, ld = len + 2 apart; the gaps
 * must stay untouched.  The references round each operation on its own
 * statement (no contraction into an fma).
 */
#define BN_CASE(T, S)                                                         \
	static void bn_case_##S(const struct ag_k_isa *k, int64_t len,        \
				struct rng *r)                                \
	{                                                                     \
		enum { RUNS = 3 };                                            \
		int64_t ld = len + 2, n = RUNS * ld;                          \
		T x[RUNS * 40], g[RUNS * 40], y[RUNS * 40], dx[RUNS * 40];    \
		T a = (T)rng_range(r, -3, 3), b = (T)rng_range(r, -3, 3);     \
		double m = rng_range(r, -1, 1), A = rng_range(r, -2, 2);      \
		double B = rng_range(r, -2, 2), C = rng_range(r, -1, 1);      \
                                                                              \
		for (int64_t i = 0; i < n; i++) {                             \
			x[i] = (T)rng_range(r, -10, 10);                      \
			g[i] = (T)rng_range(r, -10, 10);                      \
			y[i] = dx[i] = (T)-7;                                 \
		}                                                             \
		x[0] = (T)NAN;                                                \
		k->bn_affine_##S(RUNS, len, ld, x, y, a, b);                  \
		k->bn_dx_##S(RUNS, len, ld, g, x, dx, m, A, B, C);            \
		for (int64_t i = 0; i < n; i++) {                             \
			T wy = (T)-7, wdx = (T)-7;                            \
                                                                              \
			if (i % ld < len) {                                   \
				double t1, t2;                                \
                                                                              \
				wy = x[i] * a;                                \
				wy = wy + b;                                  \
				t1 = g[i] * A;                                \
				t2 = (double)x[i] - m;                        \
				t2 = t2 * B;                                  \
				t1 = t1 + t2;                                 \
				wdx = (T)(t1 + C);                            \
			}                                                     \
			cr_assert(same_##S(y[i], wy) && same_##S(dx[i], wdx), \
				  "%s bn_" #S " len %ld at %ld: %a %a, "      \
				  "want %a %a",                               \
				  k->name, (long)len, (long)i, (double)y[i],  \
				  (double)dx[i], (double)wy, (double)wdx);    \
		}                                                             \
	}

BN_CASE(float, f32)
BN_CASE(double, f64)

Test(ops, batchnorm)
{
	struct rng r = { 99 };

	for (int k = 0; k < TEST_NISA; k++) {
		const struct ag_k_isa *t = test_isa(k);

		if (!t)
			continue;
		for (int64_t len = 0; len <= 37; len++) {
			for (int rep = 0; rep < 20; rep++) {
				bn_case_f32(t, len, &r);
				bn_case_f64(t, len, &r);
			}
		}
	}
}

/*
 * Batch norm's gradient sums: their order of additions differs between
 * the paths, so the data are small integers (every sum exact in any
 * order) or random (against a long double sum, to 1e-12 of sum |term|).
 * The gaps between the runs hold NaN: a read there would show.
 */
#define BN_SUMS_CASE(T, S)                                                     \
	static void bn_sums_case_##S(const struct ag_k_isa *k, int64_t len,    \
				     bool ints, struct rng *r)                 \
	{                                                                      \
		enum { RUNS = 3 };                                             \
		int64_t ld = len + 2;                                          \
		T x[RUNS * 40] = { 0 }, g[RUNS * 40] = { 0 };                  \
		double m = ints ? (double)(rng_next(r) % 7) - 3 :              \
				  rng_range(r, -1, 1);                         \
		long double sg = 0, sgx = 0, ag = 0, agx = 0;                  \
		double got_sg, got_sgx;                                        \
                                                                               \
		for (int64_t i = 0; i < RUNS * ld; i++) {                      \
			if (i % ld >= len) {                                   \
				x[i] = g[i] = (T)NAN;                          \
				continue;                                      \
			}                                                      \
			x[i] = ints ? (T)((double)(rng_next(r) % 17) - 8) :    \
				      (T)rng_range(r, -10, 10);                \
			g[i] = ints ? (T)((double)(rng_next(r) % 17) - 8) :    \
				      (T)rng_range(r, -10, 10);                \
			sg += g[i];                                            \
			sgx += (long double)g[i] * ((long double)x[i] - m);    \
			ag += fabsl((long double)g[i]);                        \
			agx += fabsl((long double)g[i] *                       \
				     ((long double)x[i] - m));                 \
		}                                                              \
		k->bn_sums_##S(RUNS, len, ld, g, x, m, &got_sg, &got_sgx);     \
		cr_assert(                                                     \
			ints ? got_sg == (double)sg &&got_sgx == (double)sgx : \
			       fabsl(got_sg - sg) <= 1e-12L * ag &&            \
					fabsl(got_sgx - sgx) <= 1e-12L * agx,  \
			"%s bn_sums_" #S " len %ld: %a %a, want %La %La",      \
			k->name, (long)len, got_sg, got_sgx, sg, sgx);         \
	}

BN_SUMS_CASE(float, f32)
BN_SUMS_CASE(double, f64)

Test(ops, bn_sums)
{
	struct rng r = { 7 };

	for (int k = 0; k < TEST_NISA; k++) {
		const struct ag_k_isa *t = test_isa(k);

		if (!t)
			continue;
		for (int64_t len = 0; len <= 37; len++) {
			for (int rep = 0; rep < 10; rep++) {
				bn_sums_case_f32(t, len, rep & 1, &r);
				bn_sums_case_f64(t, len, rep & 1, &r);
			}
		}
	}
}

/*
 * Dropout's mask words against the stream drawn one value at a time (the
 * generator of common.h is the same SplitMix64: its i-th output from key
 * is draw i); words past the span stay untouched.
 */
Test(ops, dropout_bits)
{
	static const int64_t lens[] = { 0, 1, 63, 64, 65, 127, 128, 200, 1000 };
	static const double keep[] = { 0, 0.1, 0.5, 0.9, 1 };
	struct rng kr = { 5 };

	for (int k = 0; k < TEST_NISA; k++) {
		const struct ag_k_isa *t = test_isa(k);

		if (!t)
			continue;
		for (size_t l = 0; l < sizeof(lens) / sizeof(lens[0]); l++) {
			for (size_t p = 0; p < sizeof(keep) / sizeof(keep[0]);
			     p++) {
				int64_t n = lens[l], first = 64 * (int64_t)l;
				uint64_t key = rng_next(&kr), bits[20];
				uint64_t below = (uint64_t)(keep[p] * 0x1p53);
				struct rng r = { key };

				memset(bits, 0x5a, sizeof(bits));
				for (int64_t i = 0; i < first; i++)
					rng_next(&r);
				t->dropout_bits(key, first, n, below, bits);
				for (int64_t w = 0; w < 20; w++) {
					uint64_t want = CANARY;

					if (w * 64 < n)
						want = 0;
					for (int64_t b = 0; b < 64; b++)
						if (w * 64 + b < n &&
						    rng_next(&r) >> 11 < below)
							want |= 1ull << b;
					cr_assert(bits[w] == want,
						  "%s dropout_bits n %ld keep "
						  "%g word %ld: %016lx, want "
						  "%016lx",
						  t->name, (long)n, keep[p],
						  (long)w,
						  (unsigned long)bits[w],
						  (unsigned long)want);
				}
			}
		}
	}
}

/*
 * The optimisers' updates against torch's formulas one element at a time
 * (each operation its own statement, so nothing is fused), every option,
 * lengths around the vector widths, NaN and inf among the inputs.
 */
#define OPT_CASE(T, S)                                                         \
	static T opt_value_##S(struct rng *r)                                  \
	{                                                                      \
		uint64_t u = rng_next(r) % 64;                                 \
                                                                               \
		if (u == 0)                                                    \
			return (T)NAN;                                         \
		if (u == 1)                                                    \
			return (T)INFINITY;                                    \
		if (u == 2)                                                    \
			return 0;                                              \
		return (T)rng_range(r, -2, 2);                                 \
	}                                                                      \
                                                                               \
	static void sgd_ref_##S(int64_t n, T *p, const T *g, T *buf,           \
				const struct ag_k_sgd *a)                      \
	{                                                                      \
		T wd = (T)a->wd, mom = (T)a->momentum, damp1 = (T)a->damp1;    \
		T nlr = (T)a->nlr;                                             \
                                                                               \
		for (int64_t i = 0; i < n; i++) {                              \
			T d = g[i], t;                                         \
                                                                               \
			if (a->wd != 0) {                                      \
				t = wd * p[i];                                 \
				d = d + t;                                     \
			}                                                      \
			if (buf) {                                             \
				T b = d;                                       \
                                                                               \
				if (!a->first) {                               \
					b = buf[i] * mom;                      \
					t = damp1 * d;                         \
					b = b + t;                             \
				}                                              \
				buf[i] = b;                                    \
				if (a->nesterov) {                             \
					t = mom * b;                           \
					d = d + t;                             \
				} else {                                       \
					d = b;                                 \
				}                                              \
			}                                                      \
			t = nlr * d;                                           \
			p[i] = p[i] + t;                                       \
		}                                                              \
	}                                                                      \
                                                                               \
	static void adam_ref_##S(int64_t n, T *p, const T *g, T *m, T *v,      \
				 T *vmax, const struct ag_k_adam *a)           \
	{                                                                      \
		T w = (T)a->w, w1 = 1 - w, b2 = (T)a->beta2, c2 = (T)a->c2;    \
		T eps = (T)a->eps, wd = (T)a->wd, decay = (T)a->decay;         \
		T nss = (T)a->nss, bc2s = (T)a->bc2s;                          \
                                                                               \
		for (int64_t i = 0; i < n; i++) {                              \
			T gi = g[i], t, den;                                   \
                                                                               \
			if (a->decoupled) {                                    \
				p[i] = p[i] * decay;                           \
			} else if (a->wd != 0) {                               \
				t = wd * p[i];                                 \
				gi = gi + t;                                   \
			}                                                      \
			if (a->lerp_hi) {                                      \
				t = gi - m[i];                                 \
				t = w * t;                                     \
				m[i] = m[i] + t;                               \
			} else {                                               \
				t = gi - m[i];                                 \
				t = t * w1;                                    \
				m[i] = gi - t;                                 \
			}                                                      \
			t = c2 * gi;                                           \
			t = t * gi;                                            \
			v[i] = v[i] * b2;                                      \
			v[i] = v[i] + t;                                       \
			if (vmax) {                                            \
				if (!(vmax[i] > v[i] || isnan(vmax[i])))       \
					vmax[i] = v[i];                        \
				den = (T)sqrt(vmax[i]);                        \
			} else {                                               \
				den = (T)sqrt(v[i]);                           \
			}                                                      \
			den = den / bc2s;                                      \
			den = den + eps;                                       \
			t = nss * m[i];                                        \
			t = t / den;                                           \
			p[i] = p[i] + t;                                       \
		}                                                              \
	}                                                                      \
                                                                               \
	static void opt_case_##S(const struct ag_k_isa *k, int64_t n, int opt, \
				 struct rng *r)                                \
	{                                                                      \
		enum { N = 80, A = 6 };                                        \
		T in[A][N + 1], want[A][N + 1], got[A][N + 1];                 \
		bool adam = opt & 64;                                          \
                                                                               \
		for (int j = 0; j < A; j++)                                    \
			for (int64_t i = 0; i <= N; i++)                       \
				in[j][i] = opt_value_##S(r);                   \
		for (int64_t i = 0; i <= N; i++) /* v, vmax >= 0 */            \
			in[3][i] = in[4][i] = (T)fabs((double)in[3][i]);       \
		memcpy(want, in, sizeof(in));                                  \
		memcpy(got, in, sizeof(in));                                   \
		if (!adam) {                                                   \
			struct ag_k_sgd a = { opt & 1 ? 1e-2 : 0,              \
					      0.9,                             \
					      0.75,                            \
					      -0.1,                            \
					      opt & 2,                         \
					      opt & 4 };                       \
			bool mom = opt & 8;                                    \
                                                                               \
			sgd_ref_##S(n, want[0], want[1], mom ? want[2] : 0,    \
				    &a);                                       \
			k->sgd_##S(n, got[0], got[1], mom ? got[2] : 0, &a);   \
		} else {                                                       \
			double b1 = opt & 2 ? 0.9 : 0.3, t = 3, lr = 1e-2;     \
			struct ag_k_adam a = { -(lr / (1 - pow(b1, t))),       \
					       sqrt(1 - pow(0.999, t)),        \
					       1 - b1,                         \
					       0.999,                          \
					       1 - 0.999,                      \
					       1e-8,                           \
					       opt & 1 ? 1e-2 : 0,             \
					       1 - lr * 1e-2,                  \
					       opt & 4,                        \
					       b1 > 0.5 };                     \
			bool ams = opt & 8;                                    \
                                                                               \
			adam_ref_##S(n, want[0], want[1], want[2], want[3],    \
				     ams ? want[4] : 0, &a);                   \
			k->adam_##S(n, got[0], got[1], got[2], got[3],         \
				    ams ? got[4] : 0, &a);                     \
		}                                                              \
		for (int j = 0; j < A; j++)                                    \
			for (int64_t i = 0; i <= N; i++)                       \
				cr_assert(same_nan_##S(got[j][i], want[j][i]), \
					  "%s %s_" #S " opt %d n %ld: array "  \
					  "%d [%ld] %a, want %a",              \
					  k->name, adam ? "adam" : "sgd", opt, \
					  (long)n, j, (long)i,                 \
					  (double)got[j][i],                   \
					  (double)want[j][i]);                 \
	}

OPT_CASE(float, f32)
OPT_CASE(double, f64)

Test(ops, optim)
{
	static const int64_t lens[] = { 0, 1, 3, 4, 7, 8, 15, 16, 17, 33, 80 };
	struct rng r = { 31 };

	for (int k = 0; k < TEST_NISA; k++) {
		const struct ag_k_isa *t = test_isa(k);

		if (!t)
			continue;
		for (size_t l = 0; l < sizeof(lens) / sizeof(lens[0]); l++) {
			for (int opt = 0; opt < 16; opt++) {
				opt_case_f32(t, lens[l], opt, &r);
				opt_case_f64(t, lens[l], opt, &r);
				opt_case_f32(t, lens[l], 64 | opt, &r);
				opt_case_f64(t, lens[l], 64 | opt, &r);
			}
		}
	}
}
