/* SPDX-License-Identifier: MIT */
/*
 * Kernels of single ops that are not span math: the 2x2 max pool and its
 * scatter (engine/ops/pool2d.c), batch norm's per-channel runs
 * (engine/ops/batchnorm.c), dropout's mask words (engine/ops/dropout.c).
 * kernels.c includes this file once, after the templates, so each ISA's
 * library compiles it with that ISA's flags.
 *
 * The loops run at the ISA's full width: batch norm's through vec.h, whose
 * one-lane generic vectors make them the plain loops there; the max pool's
 * deinterleave and zip are AVX-512 and AVX2 intrinsics, and the generic
 * table takes the plain loops of the same file, which give the same bits.
 * Every result but bn_sums' must be bitwise the one the ops computed
 * before these loops moved here, so no multiply-add may be fused (clang fuses within an
 * expression by default, and these libraries have -mfma).
 * No include guard on purpose.
 */
#include <string.h>

#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
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

#if AG_KISA == AG_KISA_AVX512 || AG_KISA == AG_KISA_AVX2
#define KO_POOL 1
/*
 * The vector pool works in steps of up to 2 KO_K windows: KO_K windows
 * from source A, then up to KO_K from source B.  Along a wide row A and B
 * are its next two runs of KO_K windows; on AVX-512, rows of at most KO_K
 * windows go two at a time, A one row and B the next, with k = ow.  Lane
 * i < k is A's window i, lane k + j B's window j, so the step's outputs
 * are lanes 0 .. na + nb - 1, contiguous in y and idx both ways.
 *
 * Masked loads and stores cost more than the whole step on some CPUs
 * (AMD Zen 4), so only a plane's last steps (tail) use them.  The others
 * load and store whole vectors: a load past a row reads the next rows of
 * the same plane, and a store past a step's windows lands where a later
 * step writes (see scatter2_step for the order that needs).
 *
 * Window positions are int32 lanes (the caller checks the plane fits);
 * plan.at is lane i's position relative to A's first window.
 */
#if AG_KISA == AG_KISA_AVX512
#define KO_K 8
#define KO_NARROW 1

struct max2_plan {
	__m512i even, odd; /* lane i's top left, top right in (A, B) */
	__m512i zip0, zip1; /* interleave of A's and B's lanes, scatter */
	__m512i at;
};

static inline void max2_plan_init(struct max2_plan *p, int64_t k, int64_t at_b)
{
	int32_t e[16], z0[16], z1[16], at[16];

	for (int i = 0; i < 16; i++) {
		e[i] = (int32_t)(i < k ? 2 * i : (16 + 2 * (i - k)) & 31);
		at[i] = (int32_t)(i < k ? 2 * i : at_b + 2 * (i - k));
		/* z0: A's lanes 0..k-1 of two vectors zipped, z1: B's */
		z0[i] = (int32_t)((i & 1) * 16 + i / 2);
		z1[i] = (int32_t)(((i & 1) * 16 + k + i / 2) & 31);
	}
	p->even = _mm512_loadu_si512(e);
	p->odd = _mm512_add_epi32(p->even, _mm512_set1_epi32(1));
	p->zip0 = _mm512_loadu_si512(z0);
	p->zip1 = _mm512_loadu_si512(z1);
	p->at = _mm512_loadu_si512(at);
}

/* n elements at p, all VF_W unless tail */
static inline __m512 ko_ld(const float *p, int64_t n, bool tail)
{
	return tail ? _mm512_maskz_loadu_ps(vf_tailmask(n), p) :
		      _mm512_loadu_ps(p);
}

static inline void ko_st(float *p, __m512 v, int64_t n, bool tail)
{
	if (tail)
		_mm512_mask_storeu_ps(p, vf_tailmask(n), v);
	else
		_mm512_storeu_ps(p, v);
}

/* the int64 at p, n of them (at most 16), as int32 lanes */
static inline __m512i ko_ld_idx(const int64_t *p, int64_t n, bool tail)
{
	__m512i l0, l1;

	if (tail) {
		l0 = _mm512_maskz_loadu_epi64(vd_tailmask(n < 8 ? n : 8), p);
		l1 = _mm512_maskz_loadu_epi64(vd_tailmask(n > 8 ? n - 8 : 0),
					      p + 8);
	} else {
		l0 = _mm512_loadu_si512(p);
		l1 = _mm512_loadu_si512(p + 8);
	}
	return _mm512_inserti64x4(
		_mm512_castsi256_si512(_mm512_cvtepi64_epi32(l0)),
		_mm512_cvtepi64_epi32(l1), 1);
}

static inline void ko_st_idx(int64_t *p, __m512i at, int64_t n, bool tail)
{
	__m512i l0 = _mm512_cvtepi32_epi64(_mm512_castsi512_si256(at));
	__m512i l1 = _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(at, 1));

	if (tail) {
		_mm512_mask_storeu_epi64(p, vd_tailmask(n < 8 ? n : 8), l0);
		_mm512_mask_storeu_epi64(p + 8, vd_tailmask(n > 8 ? n - 8 : 0),
					 l1);
	} else {
		_mm512_storeu_si512(p, l0);
		_mm512_storeu_si512(p + 8, l1);
	}
}

static inline __m512 ko_even(__m512 a, __m512 b, const struct max2_plan *p)
{
	return _mm512_permutex2var_ps(a, p->even, b);
}

static inline __m512 ko_odd(__m512 a, __m512 b, const struct max2_plan *p)
{
	return _mm512_permutex2var_ps(a, p->odd, b);
}

/* the step's A, B lanes of z0, z1 interleaved */
static inline __m512 ko_zip_a(__m512 z0, __m512 z1, const struct max2_plan *p)
{
	return _mm512_permutex2var_ps(z0, p->zip0, z1);
}

static inline __m512 ko_zip_b(__m512 z0, __m512 z1, const struct max2_plan *p)
{
	return _mm512_permutex2var_ps(z0, p->zip1, z1);
}

#define ko_vi __m512i
#define ko_vi_set1(s) _mm512_set1_epi32(s)
#define ko_vi_add(a, b) _mm512_add_epi32(a, b)
#define ko_vi_sub(a, b) _mm512_sub_epi32(a, b)
/* t ? b : a, int32 lanes */
#define ko_vi_sel(t, b, a) _mm512_mask_blend_epi32(t, a, b)
/* v where the int32 lanes are equal, else +0 */
#define ko_vi_eq_take(x, y, v) \
	_mm512_maskz_mov_ps(_mm512_cmpeq_epi32_mask(x, y), v)
#else /* AVX2: k is always 4 */
#define KO_K 4
#define KO_NARROW 0

struct max2_plan {
	__m256i at;
};

static inline void max2_plan_init(struct max2_plan *p, int64_t k, int64_t at_b)
{
	(void)k;
	p->at = _mm256_setr_epi32(0, 2, 4, 6, (int32_t)at_b, (int32_t)at_b + 2,
				  (int32_t)at_b + 4, (int32_t)at_b + 6);
}

static inline __m256 ko_ld(const float *p, int64_t n, bool tail)
{
	return tail ? vf_loadn(p, n) : _mm256_loadu_ps(p);
}

static inline void ko_st(float *p, __m256 v, int64_t n, bool tail)
{
	if (tail)
		vf_storen(p, v, n);
	else
		_mm256_storeu_ps(p, v);
}

/* lanes 0..3: a's even (odd) elements, 4..7: b's */
static inline __m256 ko_even(__m256 a, __m256 b, const struct max2_plan *p)
{
	(void)p;
	return _mm256_castpd_ps(_mm256_permute4x64_pd(
		_mm256_castps_pd(_mm256_shuffle_ps(a, b, 0x88)), 0xd8));
}

static inline __m256 ko_odd(__m256 a, __m256 b, const struct max2_plan *p)
{
	(void)p;
	return _mm256_castpd_ps(_mm256_permute4x64_pd(
		_mm256_castps_pd(_mm256_shuffle_ps(a, b, 0xdd)), 0xd8));
}

static inline __m256i ko_ld_idx(const int64_t *p, int64_t n, bool tail)
{
	__m256i l0, l1;

	if (tail) {
		l0 = _mm256_maskload_epi64((const long long *)p,
					   vd_tailmask(n < 4 ? n : 4));
		l1 = _mm256_maskload_epi64((const long long *)p + 4,
					   vd_tailmask(n > 4 ? n - 4 : 0));
	} else {
		l0 = _mm256_loadu_si256((const __m256i *)p);
		l1 = _mm256_loadu_si256((const __m256i *)p + 1);
	}
	/* the low halves of the eight int64, in order */
	return _mm256_castps_si256(ko_even(_mm256_castsi256_ps(l0),
					   _mm256_castsi256_ps(l1), NULL));
}

static inline void ko_st_idx(int64_t *p, __m256i at, int64_t n, bool tail)
{
	__m256i l0 = _mm256_cvtepi32_epi64(_mm256_castsi256_si128(at));
	__m256i l1 = _mm256_cvtepi32_epi64(_mm256_extracti128_si256(at, 1));

	if (tail) {
		_mm256_maskstore_epi64((long long *)p,
				       vd_tailmask(n < 4 ? n : 4), l0);
		_mm256_maskstore_epi64((long long *)p + 4,
				       vd_tailmask(n > 4 ? n - 4 : 0), l1);
	} else {
		_mm256_storeu_si256((__m256i *)p, l0);
		_mm256_storeu_si256((__m256i *)p + 1, l1);
	}
}

static inline __m256 ko_zip_a(__m256 z0, __m256 z1, const struct max2_plan *p)
{
	(void)p;
	return _mm256_permute2f128_ps(_mm256_unpacklo_ps(z0, z1),
				      _mm256_unpackhi_ps(z0, z1), 0x20);
}

static inline __m256 ko_zip_b(__m256 z0, __m256 z1, const struct max2_plan *p)
{
	(void)p;
	return _mm256_permute2f128_ps(_mm256_unpacklo_ps(z0, z1),
				      _mm256_unpackhi_ps(z0, z1), 0x31);
}

#define ko_vi __m256i
#define ko_vi_set1(s) _mm256_set1_epi32(s)
#define ko_vi_add(a, b) _mm256_add_epi32(a, b)
#define ko_vi_sub(a, b) _mm256_sub_epi32(a, b)
#define ko_vi_sel(t, b, a)                                           \
	_mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(a), \
					     _mm256_castsi256_ps(b), t))
#define ko_vi_eq_take(x, y, v) \
	_mm256_and_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(x, y)), v)
#endif

/*
 * Max and position of na + nb windows, A's at sa, B's at sb, rows s2
 * apart; tail: only the windows' elements are loaded and only their
 * outputs stored.
 */
static inline __attribute__((always_inline)) void
max2_step(const float *sa, const float *sb, int64_t s2, int64_t na, int64_t nb,
	  int32_t a0, int32_t w, const struct max2_plan *p, float *y,
	  int64_t *idx, bool tail)
{
	vf_t ta = ko_ld(sa, 2 * na, tail), tb = ko_ld(sb, 2 * nb, tail);
	vf_t ba = ko_ld(sa + s2, 2 * na, tail);
	vf_t bb = ko_ld(sb + s2, 2 * nb, tail);
	ko_vi base = ko_vi_add(p->at, ko_vi_set1(a0)), at;
	vf_t m, v;
	vf_m t;

	/* torch's order: (0,0) (0,1) (1,0) (1,1); the first largest, or the
	 * last NaN */
	m = ko_even(ta, tb, p);
	v = ko_odd(ta, tb, p);
	t = vf_or(vf_gt(v, m), vf_isnan(v));
	m = vf_sel(t, v, m);
	at = ko_vi_sel(t, ko_vi_add(base, ko_vi_set1(1)), base);
	v = ko_even(ba, bb, p);
	t = vf_or(vf_gt(v, m), vf_isnan(v));
	m = vf_sel(t, v, m);
	at = ko_vi_sel(t, ko_vi_add(base, ko_vi_set1(w)), at);
	v = ko_odd(ba, bb, p);
	t = vf_or(vf_gt(v, m), vf_isnan(v));
	m = vf_sel(t, v, m);
	at = ko_vi_sel(t, ko_vi_add(base, ko_vi_set1(w + 1)), at);
	ko_st(y, m, na + nb, tail);
	if (idx)
		ko_st_idx(idx, at, na + nb, tail);
}

/*
 * The scatter of na + nb windows: A's 2 na columns of the two rows at da
 * and da + w, B's 2 nb at db and db + w (nb = 0: none).  Positions compare
 * in int32 (the plane fits).  Whole stores past the windows land on
 * elements a later store writes: in a row's last step on the rest of the
 * row, the odd last column (written after) and the next rows.  So along a
 * row (wide) the top row's stores go first; with a row in A and the next
 * in B (narrow) the rows go in order.
 */
static inline __attribute__((always_inline)) void
scatter2_step(const float *g, const int64_t *idx, int64_t na, int64_t nb,
	      int32_t a0, int32_t w, const struct max2_plan *p, float *da,
	      float *db, bool tail, bool narrow)
{
	int64_t n = na + nb;
	vf_t v = vf_add(ko_ld(g, n, tail), vf_set1(0));
	ko_vi rel = ko_vi_sub(ko_ld_idx(idx, n, tail),
			      ko_vi_add(p->at, ko_vi_set1(a0)));
	vf_t z0 = ko_vi_eq_take(rel, ko_vi_set1(0), v);
	vf_t z1 = ko_vi_eq_take(rel, ko_vi_set1(1), v);
	vf_t z2 = ko_vi_eq_take(rel, ko_vi_set1(w), v);
	vf_t z3 = ko_vi_eq_take(rel, ko_vi_set1(w + 1), v);

	ko_st(da, ko_zip_a(z0, z1, p), 2 * na, tail);
	if (narrow) {
		ko_st(da + w, ko_zip_a(z2, z3, p), 2 * na, tail);
		if (nb) {
			ko_st(db, ko_zip_b(z0, z1, p), 2 * nb, tail);
			ko_st(db + w, ko_zip_b(z2, z3, p), 2 * nb, tail);
		}
		return;
	}
	if (nb)
		ko_st(db, ko_zip_b(z0, z1, p), 2 * nb, tail);
	ko_st(da + w, ko_zip_a(z2, z3, p), 2 * na, tail);
	if (nb)
		ko_st(db + w, ko_zip_b(z2, z3, p), 2 * nb, tail);
}

/* whether the plane's window positions fit the int32 lanes */
static inline bool max2_fits(int64_t oh, int64_t w)
{
	return w < INT32_MAX / 4 && (2 * oh + 3) * w < INT32_MAX;
}

/*
 * Row oy's steps: whole ones, the last moved back to end at the row's end
 * (its first windows again, which get the same values), or one partial
 * step when the row has fewer than 2 KO_K windows.
 */
#define KO_ROW_STEPS(ox, n, ow)                                              \
	for (int64_t ox = 0, n = ow < 2 * KO_K ? ow : 2 * KO_K; ox < ow;     \
	     ox = ox + 2 * KO_K < ow && ox + 4 * KO_K > ow ? ow - 2 * KO_K : \
							     ox + 2 * KO_K)

static void max2_vec_f32(int64_t oh, int64_t ow, const float *x, int64_t ldx,
			 int64_t w, float *y, int64_t *idx)
{
	/* elements of x the plane surely has; outputs */
	int64_t lim = (2 * oh - 1) * ldx + 2 * ow, no = oh * ow;
	struct max2_plan p;

	if (KO_NARROW && ow <= KO_K) {
		/* two rows a step: B is the next row, 2 w positions on */
		max2_plan_init(&p, ow, 2 * w);
		for (int64_t oy = 0; oy < oh; oy += 2) {
			int64_t o = oy * ow, nb = oy + 1 < oh ? ow : 0;
			int64_t sa = 2 * oy * ldx, sb = nb ? sa + 2 * ldx : sa;
			bool tail = sb + ldx + VF_W > lim || o + VF_W > no;

			max2_step(x + sa, x + sb, ldx, ow, nb,
				  (int32_t)(2 * oy * w), (int32_t)w, &p, y + o,
				  idx ? idx + o : NULL, tail);
		}
		return;
	}
	max2_plan_init(&p, KO_K, 2 * KO_K);
	for (int64_t oy = 0; oy < oh; oy++) {
		KO_ROW_STEPS(ox, n, ow)
		{
			int64_t na = n < KO_K ? n : KO_K, o = oy * ow + ox;
			int64_t sa = 2 * oy * ldx + 2 * ox;
			int64_t sb = n > na ? sa + 2 * KO_K : sa;
			bool tail = sb + ldx + VF_W > lim || o + VF_W > no;

			max2_step(x + sa, x + sb, ldx, na, n - na,
				  (int32_t)(2 * oy * w + 2 * ox), (int32_t)w,
				  &p, y + o, idx ? idx + o : NULL, tail);
		}
	}
}

static void scatter2_vec_f32(int64_t oh, int64_t ow, const float *g,
			     const int64_t *idx, int64_t w, float *dx)
{
	int64_t no = oh * ow, nd = 2 * oh * w;
	struct max2_plan p;

	if (KO_NARROW && ow <= KO_K) {
		max2_plan_init(&p, ow, 2 * w);
		for (int64_t oy = 0; oy < oh; oy += 2) {
			int64_t o = oy * ow, nb = oy + 1 < oh ? ow : 0;
			int64_t da = 2 * oy * w, db = nb ? da + 2 * w : da;
			bool tail = o + VF_W > no || db + w + VF_W > nd;

			scatter2_step(g + o, idx + o, ow, nb,
				      (int32_t)(2 * oy * w), (int32_t)w, &p,
				      dx + da, dx + db, tail, true);
		}
		return;
	}
	max2_plan_init(&p, KO_K, 2 * KO_K);
	for (int64_t oy = 0; oy < oh; oy++) {
		KO_ROW_STEPS(ox, n, ow)
		{
			int64_t na = n < KO_K ? n : KO_K, o = oy * ow + ox;
			int64_t da = 2 * oy * w + 2 * ox;
			int64_t db = n > na ? da + 2 * KO_K : da;
			bool tail = o + VF_W > no || db + w + VF_W > nd;

			scatter2_step(g + o, idx + o, na, n - na,
				      (int32_t)(2 * oy * w + 2 * ox),
				      (int32_t)w, &p, dx + da, dx + db, tail,
				      false);
		}
	}
}
#else
#define KO_POOL 0
#endif

static void maxpool2_f32(int64_t oh, int64_t ow, const float *x, int64_t ldx,
			 int64_t w, float *y, int64_t *idx)
{
#if KO_POOL
	if (ow > 0 && max2_fits(oh, w)) {
		max2_vec_f32(oh, ow, x, ldx, w, y, idx);
		return;
	}
#endif
	for (int64_t oy = 0; oy < oh; oy++, y += ow, idx = idx ? idx + ow : 0)
		max2_row_f32(x + 2 * oy * ldx, ldx, ow, 2 * oy * w, w, y, idx);
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

static void maxpool2_bwd_f32(int64_t h, int64_t w, const float *g,
			     const int64_t *idx, float *dx)
{
	int64_t oh = h / 2, ow = w / 2;

#if KO_POOL
	if (ow > 0 && max2_fits(oh, w)) {
		scatter2_vec_f32(oh, ow, g, idx, w, dx);
		if (w & 1)
			for (int64_t r = 0; r < 2 * oh; r++)
				dx[r * w + w - 1] = 0;
		goto last_row;
	}
#endif
	for (int64_t oy = 0; oy < oh; oy++, g += ow, idx += ow) {
		float *d = dx + 2 * oy * w;

		scatter2_row_f32(g, idx, 2 * oy * w, w, ow, d);
		if (w & 1)
			d[w - 1] = d[2 * w - 1] = 0;
	}
#if KO_POOL
last_row:
#endif
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
	vf_t va = vf_set1(a), vb = vf_set1(b);

	for (int64_t r = 0; r < runs; r++, x += ld, y += ld) {
		int64_t j = 0;

		for (; j + VF_W <= len; j += VF_W)
			vf_store(y + j, vf_add(vf_mul(vf_load(x + j), va), vb));
		if (j < len)
			vf_storen(y + j,
				  vf_add(vf_mul(vf_loadn(x + j, len - j), va),
					 vb),
				  len - j);
	}
}

static void bn_affine_f64(int64_t runs, int64_t len, int64_t ld,
			  const double *x, double *y, double a, double b)
{
	for (int64_t r = 0; r < runs; r++, x += ld, y += ld)
		for (int64_t j = 0; j < len; j++)
			y[j] = x[j] * a + b;
}

/* dx = g A + (x - m) B + C, in f64: (g A + (x - m) B) + C */
static void bn_dx_f32(int64_t runs, int64_t len, int64_t ld, const float *g,
		      const float *x, float *dx, double m, double A, double B,
		      double C)
{
	vw_t va = vd_set1(A), vb = vd_set1(B), vc = vd_set1(C);
	vw_t vm = vd_set1(m);

	for (int64_t r = 0; r < runs; r++, g += ld, x += ld, dx += ld) {
		int64_t j = 0;

		for (; j + VW_W <= len; j += VW_W) {
			vw_t t = vd_mul(vd_sub(vw_loadf(x + j), vm), vb);

			t = vd_add(vd_mul(vw_loadf(g + j), va), t);
			vw_storef(dx + j, vd_add(t, vc));
		}
		if (j < len) {
			int64_t n = len - j;
			vw_t t = vd_mul(vd_sub(vw_loadfn(x + j, n), vm), vb);

			t = vd_add(vd_mul(vw_loadfn(g + j, n), va), t);
			vw_storefn(dx + j, vd_add(t, vc), n);
		}
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

/*
 * sg = sum(g), sgx = sum(g (x - m)) over the runs, in f64: each run in
 * two vectors of partial sums (one chain of dependent additions ran at
 * the adder's latency), added to the totals in run order.
 */
#define BN_SUMS(T, S, LOAD)                                                    \
	static void bn_sums_##S(int64_t runs, int64_t len, int64_t ld,         \
				const T *g, const T *x, double m, double *sgp, \
				double *sgxp)                                  \
	{                                                                      \
		vd_t vm = vd_set1(m);                                          \
		double sg = 0, sgx = 0;                                        \
                                                                               \
		for (int64_t r = 0; r < runs; r++, g += ld, x += ld) {         \
			vd_t a0 = vd_set1(0), a1 = a0, b0 = a0, b1 = a0, v;    \
			double ta = 0, tb = 0;                                 \
			int64_t j = 0;                                         \
                                                                               \
			for (; j + 2 * VD_W <= len; j += 2 * VD_W) {           \
				v = LOAD(g + j);                               \
				a0 = vd_add(a0, v);                            \
				b0 = vd_add(b0, vd_mul(v, vd_sub(LOAD(x + j),  \
								 vm)));        \
				v = LOAD(g + j + VD_W);                        \
				a1 = vd_add(a1, v);                            \
				b1 = vd_add(b1, vd_mul(v, vd_sub(LOAD(x + j +  \
								      VD_W),   \
								 vm)));        \
			}                                                      \
			for (; j < len; j++) {                                 \
				ta += g[j];                                    \
				tb += (double)g[j] * ((double)x[j] - m);       \
			}                                                      \
			sg += vd_hsum(vd_add(a0, a1)) + ta;                    \
			sgx += vd_hsum(vd_add(b0, b1)) + tb;                   \
		}                                                              \
		*sgp = sg;                                                     \
		*sgxp = sgx;                                                   \
	}

/* VD_W f32 as f64 lanes (VW_W == VD_W) */
BN_SUMS(float, f32, vw_loadf)
BN_SUMS(double, f64, vd_load)

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
#undef BN_SUMS
#undef KO_POOL
#undef KO_K
#undef KO_NARROW
#undef KO_ROW_STEPS
#undef ko_vi
#undef ko_vi_set1
#undef ko_vi_add
#undef ko_vi_sub
#undef ko_vi_sel
#undef ko_vi_eq_take
