/* SPDX-License-Identifier: MIT */
/*
 * Kernels of single ops that are not span math: the 2x2 max pool and its
 * scatter (engine/ops/pool2d.c), batch norm's per-channel runs
 * (engine/ops/batchnorm.c), dropout's mask words (engine/ops/dropout.c).  kernels.c includes this file once, after
 * the templates, so each ISA's library compiles it with that ISA's flags.
 *
 * Loops here that use the compiler's generic vectors (4 lanes) are built
 * only where AG_KISA is not generic; the generic table takes the plain
 * loop of the same file, which gives the same bits.  Every result must be
 * bitwise the one the ops computed before these loops moved here, so no
 * multiply-add may be fused (clang fuses within an expression by default,
 * and these libraries have -mfma).
 * No include guard on purpose.
 */
#include <string.h>

#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

#if AG_KISA != AG_KISA_GENERIC
#define KO_VEC 1
typedef float ko_v4f __attribute__((vector_size(16)));
typedef int32_t ko_v4i __attribute__((vector_size(16)));
typedef uint32_t ko_v4u __attribute__((vector_size(16)));
typedef int64_t ko_v4l __attribute__((vector_size(32)));
typedef double ko_v4d __attribute__((vector_size(32)));
#else
#define KO_VEC 0
#endif

/* ---- 2x2 max pool, stride 2 ---- */

/*
 * Branch-free (the selects are bit masks, which compilers keep as such): on
 * random data each comparison would mispredict half the time, and that
 * cost several times the loads.  t is all ones where v takes the max.
 */
#define MAX2_ROW(T, S, U)                                                   \
	static inline T sel_##S(T a, T b, int64_t t)                        \
	{                                                                   \
		U x, y;                                                     \
                                                                            \
		memcpy(&x, &a, sizeof(x));                                  \
		memcpy(&y, &b, sizeof(y));                                  \
		x = (x & ~(U)t) | (y & (U)t);                               \
		memcpy(&a, &x, sizeof(a));                                  \
		return a;                                                   \
	}                                                                   \
                                                                            \
	static inline void max2_row_##S(const T *restrict s0, int64_t s2,   \
					int64_t ow, int64_t at0, int64_t w, \
					T *restrict y, int64_t *restrict i) \
	{                                                                   \
		for (int64_t ox = 0; ox < ow; ox++) {                       \
			const T *s = s0 + 2 * ox;                           \
			int64_t a = at0 + 2 * ox, at = a, t;                \
			T m = s[0], v;                                      \
                                                                            \
			/* torch's order: (0,0) (0,1) (1,0) (1,1); the    \
			 * first largest, or the last NaN */ \
			v = s[1];                                           \
			t = -(int64_t)((v > m) | (v != v));                 \
			m = sel_##S(m, v, t);                               \
			at = (at & ~t) | ((a + 1) & t);                     \
			v = s[s2];                                          \
			t = -(int64_t)((v > m) | (v != v));                 \
			m = sel_##S(m, v, t);                               \
			at = (at & ~t) | ((a + w) & t);                     \
			v = s[s2 + 1];                                      \
			t = -(int64_t)((v > m) | (v != v));                 \
			m = sel_##S(m, v, t);                               \
			at = (at & ~t) | ((a + w + 1) & t);                 \
			y[ox] = m;                                          \
			if (i)                                              \
				i[ox] = at;                                 \
		}                                                           \
	}

MAX2_ROW(float, f32, uint32_t)
MAX2_ROW(double, f64, uint64_t)

#if KO_VEC
static inline ko_v4i max2_take(ko_v4f *m, ko_v4f v)
{
	ko_v4i t = (v > *m) | (v != v);

	*m = (ko_v4f)(((ko_v4i)*m & ~t) | ((ko_v4i)v & t));
	return t;
}

/*
 * The same for f32, four windows at a time: the even and odd columns of
 * the two rows are the windows' four positions.  Does all ow windows and
 * returns ow, or returns 0 and leaves them to the plain loop.
 */
static int64_t max2_vec_f32(const float *restrict s0, int64_t s2, int64_t ow,
			    int64_t at0, int64_t w, float *restrict y,
			    int64_t *restrict idx)
{
	int64_t ox = 0;

	/* positions in int32: the plane's 2x2 windows fit, or not this way */
	if (at0 + w + 2 * ow > INT32_MAX || ow < 4)
		return 0;
	/*
	 * A last partial group is done as the four last windows, again for
	 * those already done: they get the same values.
	 */
	for (int64_t done = 0; done < ow; done = ox + 4) {
		const float *s;
		ko_v4f t0, t1, b0, b1, m, v;
		ko_v4i base = { 0, 2, 4, 6 }, at, t;
		ko_v4l at64;

		ox = done + 4 <= ow ? done : ow - 4;
		s = s0 + 2 * ox;
		memcpy(&t0, s, sizeof(t0));
		memcpy(&t1, s + 4, sizeof(t1));
		memcpy(&b0, s + s2, sizeof(b0));
		memcpy(&b1, s + s2 + 4, sizeof(b1));
		base += (int32_t)(at0 + 2 * ox);
		/* torch's order: (0,0) (0,1) (1,0) (1,1) */
		m = __builtin_shufflevector(t0, t1, 0, 2, 4, 6);
		at = base;
		v = __builtin_shufflevector(t0, t1, 1, 3, 5, 7);
		t = max2_take(&m, v);
		at = (at & ~t) | ((base + 1) & t);
		v = __builtin_shufflevector(b0, b1, 0, 2, 4, 6);
		t = max2_take(&m, v);
		at = (at & ~t) | ((base + (int32_t)w) & t);
		v = __builtin_shufflevector(b0, b1, 1, 3, 5, 7);
		t = max2_take(&m, v);
		at = (at & ~t) | ((base + (int32_t)w + 1) & t);
		at64 = __builtin_convertvector(at, ko_v4l);
		memcpy(y + ox, &m, sizeof(m));
		if (idx)
			memcpy(idx + ox, &at64, sizeof(at64));
	}
	return ow;
}
#endif

static void maxpool2_f32(int64_t oh, int64_t ow, const float *x, int64_t ldx,
			 int64_t w, float *y, int64_t *idx)
{
	for (int64_t oy = 0; oy < oh; oy++, y += ow, idx = idx ? idx + ow : 0) {
		const float *s = x + 2 * oy * ldx;
		int64_t n = 0;

#if KO_VEC
		n = max2_vec_f32(s, ldx, ow, 2 * oy * w, w, y, idx);
#endif
		max2_row_f32(s + 2 * n, ldx, ow - n, 2 * oy * w + 2 * n, w,
			     y + n, idx ? idx + n : NULL);
	}
}

static void maxpool2_f64(int64_t oh, int64_t ow, const double *x, int64_t ldx,
			 int64_t w, double *y, int64_t *idx)
{
	for (int64_t oy = 0; oy < oh; oy++, y += ow, idx = idx ? idx + ow : 0)
		max2_row_f64(x + 2 * oy * ldx, ldx, ow, 2 * oy * w, w, y, idx);
}

/*
 * The scatter of 2x2 stride-2 windows, which tile the plane: each element
 * is written once, the gradient where idx points and 0 elsewhere, with no
 * pass to zero the plane first.  g + 0 as the zeroed plane's sum gives
 * (-0 + 0 is +0).  A last odd row or column is in no window.  Branch-free
 * as max2_row: idx is where a random input's max fell, which no predictor
 * guesses.
 */
#define SCATTER2_ROW(T, S)                                                     \
	static void scatter2_row_##S(const T *restrict g,                      \
				     const int64_t *restrict idx, int64_t a,   \
				     int64_t w, int64_t ow, T *restrict d)     \
	{                                                                      \
		for (int64_t ox = 0; ox < ow; ox++, a += 2) {                  \
			T v = g[ox] + 0;                                       \
			int64_t i = idx[ox];                                   \
                                                                               \
			d[2 * ox] = sel_##S(0, v, -(int64_t)(i == a));         \
			d[2 * ox + 1] = sel_##S(0, v, -(int64_t)(i == a + 1)); \
			d[w + 2 * ox] = sel_##S(0, v, -(int64_t)(i == a + w)); \
			d[w + 2 * ox + 1] =                                    \
				sel_##S(0, v, -(int64_t)(i == a + w + 1));     \
		}                                                              \
	}

SCATTER2_ROW(float, f32)
SCATTER2_ROW(double, f64)

#if KO_VEC
/* d[0..7] = a0 b0 a1 b1 a2 b2 a3 b3 */
static inline void store_zip(float *d, ko_v4f a, ko_v4f b)
{
	ko_v4f lo = __builtin_shufflevector(a, b, 0, 4, 1, 5);
	ko_v4f hi = __builtin_shufflevector(a, b, 2, 6, 3, 7);

	memcpy(d, &lo, sizeof(lo));
	memcpy(d + 4, &hi, sizeof(hi));
}

/*
 * A row of f32 windows four at a time, as max2_vec_f32 (all or none).  The
 * positions compare in uint32, modulo 2^32: idx - a is one of 0, 1, w and
 * w + 1, which stay apart there while w + 1 < 2^32.
 */
static int64_t scatter2_vec_f32(const float *restrict g,
				const int64_t *restrict idx, int64_t a0,
				int64_t w, int64_t ow, float *restrict d)
{
	ko_v4u w0 = { 0, 0, 0, 0 }, w1, w2, w3;
	int64_t ox = 0;

	if (w + 1 >= UINT32_MAX || ow < 4)
		return 0;
	w1 = w0 + 1;
	w2 = w0 + (uint32_t)w;
	w3 = w2 + 1;
	for (int64_t done = 0; done < ow; done = ox + 4) {
		ko_v4u base = { 0, 2, 4, 6 }, rel;
		ko_v4f v;
		ko_v4i m0, m1, m2, m3;
		ko_v4l i64;

		ox = done + 4 <= ow ? done : ow - 4;
		memcpy(&v, g + ox, sizeof(v));
		memcpy(&i64, idx + ox, sizeof(i64));
		v += 0;
		base += (uint32_t)(a0 + 2 * ox);
		rel = __builtin_convertvector(i64, ko_v4u) - base;
		m0 = (ko_v4i)(rel == w0) & (ko_v4i)v;
		m1 = (ko_v4i)(rel == w1) & (ko_v4i)v;
		m2 = (ko_v4i)(rel == w2) & (ko_v4i)v;
		m3 = (ko_v4i)(rel == w3) & (ko_v4i)v;
		/* interleaved as two 4-wide halves: GCC splits an 8-wide
		 * shuffle into scalar stores */
		store_zip(d + 2 * ox, (ko_v4f)m0, (ko_v4f)m1);
		store_zip(d + w + 2 * ox, (ko_v4f)m2, (ko_v4f)m3);
	}
	return ow;
}
#endif

static void maxpool2_bwd_f32(int64_t h, int64_t w, const float *g,
			     const int64_t *idx, float *dx)
{
	int64_t ow = w / 2;

	for (int64_t oy = 0; oy < h / 2; oy++, g += ow, idx += ow) {
		float *d = dx + 2 * oy * w;
		int64_t a = 2 * oy * w, n = 0;

#if KO_VEC
		n = scatter2_vec_f32(g, idx, a, w, ow, d);
#endif
		if (!n)
			scatter2_row_f32(g, idx, a, w, ow, d);
		if (w & 1)
			d[w - 1] = d[2 * w - 1] = 0;
	}
	if (h & 1)
		memset(dx + (h - 1) * w, 0, (size_t)w * sizeof(float));
}

static void maxpool2_bwd_f64(int64_t h, int64_t w, const double *g,
			     const int64_t *idx, double *dx)
{
	int64_t ow = w / 2;

	for (int64_t oy = 0; oy < h / 2; oy++, g += ow, idx += ow) {
		double *d = dx + 2 * oy * w;

		scatter2_row_f64(g, idx, 2 * oy * w, w, ow, d);
		if (w & 1)
			d[w - 1] = d[2 * w - 1] = 0;
	}
	if (h & 1)
		memset(dx + (h - 1) * w, 0, (size_t)w * sizeof(double));
}

/* ---- batch norm: one channel's runs of len elements, ld apart ---- */

/* y = x a + b, rounded as the element-wise loop: x a, then + b */
static void bn_affine_f32(int64_t runs, int64_t len, int64_t ld, const float *x,
			  float *y, float a, float b)
{
	for (int64_t r = 0; r < runs; r++, x += ld, y += ld) {
		int64_t j = 0;
#if KO_VEC
		ko_v4f va = { a, a, a, a }, vb = { b, b, b, b }, v;

		for (; j + 4 <= len; j += 4) {
			memcpy(&v, x + j, sizeof(v));
			v = v * va + vb;
			memcpy(y + j, &v, sizeof(v));
		}
#endif
		for (; j < len; j++)
			y[j] = x[j] * a + b;
	}
}

static void bn_affine_f64(int64_t runs, int64_t len, int64_t ld,
			  const double *x, double *y, double a, double b)
{
	for (int64_t r = 0; r < runs; r++, x += ld, y += ld)
		for (int64_t j = 0; j < len; j++)
			y[j] = x[j] * a + b;
}

/* dx = g A + (x - m) B + C, in f64 */
static void bn_dx_f32(int64_t runs, int64_t len, int64_t ld, const float *g,
		      const float *x, float *dx, double m, double A, double B,
		      double C)
{
	for (int64_t r = 0; r < runs; r++, g += ld, x += ld, dx += ld) {
		int64_t j = 0;
#if KO_VEC
		ko_v4d va = { A, A, A, A }, vb = { B, B, B, B };
		ko_v4d vc = { C, C, C, C }, vm = { m, m, m, m };

		for (; j + 4 <= len; j += 4) {
			ko_v4f g4, x4, y4;

			memcpy(&g4, g + j, sizeof(g4));
			memcpy(&x4, x + j, sizeof(x4));
			y4 = __builtin_convertvector(
				__builtin_convertvector(g4, ko_v4d) * va +
					(__builtin_convertvector(x4, ko_v4d) -
					 vm) * vb +
					vc,
				ko_v4f);
			memcpy(dx + j, &y4, sizeof(y4));
		}
#endif
		for (; j < len; j++)
			dx[j] = (float)(g[j] * A + ((double)x[j] - m) * B + C);
	}
}

static void bn_dx_f64(int64_t runs, int64_t len, int64_t ld, const double *g,
		      const double *x, double *dx, double m, double A, double B,
		      double C)
{
	for (int64_t r = 0; r < runs; r++, g += ld, x += ld, dx += ld)
		for (int64_t j = 0; j < len; j++)
			dx[j] = g[j] * A + (x[j] - m) * B + C;
}

/* ---- dropout's mask ---- */

/* SplitMix64's output at position i of the stream that starts at key. */
static inline uint64_t splitmix_at(uint64_t key, int64_t i)
{
	uint64_t z = key + (uint64_t)(i + 1) * 0x9e3779b97f4a7c15ULL;

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static const uint64_t bit64[64] = {
	1ull << 0,  1ull << 1,	1ull << 2,  1ull << 3,	1ull << 4,  1ull << 5,
	1ull << 6,  1ull << 7,	1ull << 8,  1ull << 9,	1ull << 10, 1ull << 11,
	1ull << 12, 1ull << 13, 1ull << 14, 1ull << 15, 1ull << 16, 1ull << 17,
	1ull << 18, 1ull << 19, 1ull << 20, 1ull << 21, 1ull << 22, 1ull << 23,
	1ull << 24, 1ull << 25, 1ull << 26, 1ull << 27, 1ull << 28, 1ull << 29,
	1ull << 30, 1ull << 31, 1ull << 32, 1ull << 33, 1ull << 34, 1ull << 35,
	1ull << 36, 1ull << 37, 1ull << 38, 1ull << 39, 1ull << 40, 1ull << 41,
	1ull << 42, 1ull << 43, 1ull << 44, 1ull << 45, 1ull << 46, 1ull << 47,
	1ull << 48, 1ull << 49, 1ull << 50, 1ull << 51, 1ull << 52, 1ull << 53,
	1ull << 54, 1ull << 55, 1ull << 56, 1ull << 57, 1ull << 58, 1ull << 59,
	1ull << 60, 1ull << 61, 1ull << 62, 1ull << 63,
};

/*
 * One mask word from 64 draws of the stream at first..first+63, bits n and
 * above clear.  SplitMix64's 64-bit multiplies vectorise with AVX-512
 * (vpmullq) and, emulated, with AVX2; the draws go to an array first and
 * the compares are ORed from a table, so both loops do (at -O2 too: the
 * trip count is fixed).  The generic build's are plain loops.
 */
static uint64_t dropout_word(uint64_t key, int64_t first, uint64_t below,
			     int64_t n)
{
	uint64_t r[64], bits = 0;

	for (int b = 0; b < 64; b++)
		r[b] = splitmix_at(key, first + b) >> 11;
	for (int b = 0; b < 64; b++)
		bits |= r[b] < below ? bit64[b] : 0;
	return n < 64 ? bits & ((1ull << n) - 1) : bits;
}

static void dropout_bits(uint64_t key, int64_t first, int64_t n, uint64_t below,
			 uint64_t *bits)
{
	for (int64_t w = 0; w * 64 < n; w++)
		bits[w] = dropout_word(key, first + w * 64, below, n - w * 64);
}

#undef MAX2_ROW
#undef SCATTER2_ROW
#undef KO_VEC
