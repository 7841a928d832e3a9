// SPDX-License-Identifier: MIT
/*
 * 2-D convolution as torch's conv2d, through simd/'s GEMM: each image's
 * input patches are laid out as columns (im2col), one row per (channel,
 * kernel row, kernel column), one column per output position, and a group's
 * output is its weight rows times those columns.
 *
 * Three ops, each the others' derivative, so any order of derivative is a
 * graph of these (g the gradient of the output y, x the input, w the weight):
 *
 *   conv(x, w)           y                   = w * cols(x)
 *   conv_input(g, w)     dx = col2im(w^T g)  (conv_transpose2d)
 *   conv_weight(x, g)    dw = g cols(x)^T
 *
 * conv_input is linear in g and in w, conv_weight in x and in g: the
 * derivative of <gg, conv_input(g, w)> in g is conv(gg, w), in w it is
 * conv_weight(gg, g); that of <gw, conv_weight(x, g)> in x is
 * conv_input(g, gw), in g it is conv(x, gw).
 *
 * Images run in parallel on libag's pool, each chunk with its own column
 * buffer; each GEMM runs on one thread (ag_k_gemm_serial), as one split
 * over the pool would round differently with another thread count.  A
 * batch smaller than the pool leaves threads idle.  The weight gradient sums over images: the batch is cut into a
 * number of blocks that depends on the shapes only, each block sums its
 * images in order, and the blocks' sums are added in block order, so the
 * result does not depend on the thread count.
 */
#include <stdlib.h>
#include <string.h>

#include <ag/pool.h>

#include "ops.h"

/* The most blocks the weight gradient's sum over images is cut into. */
#define WGRAD_BLOCKS 16
/* ... and the most elements all blocks' partial sums may take. */
#define WGRAD_PART_ELEMS (1L << 22)

struct conv_geom {
	bool batched; /* x is [N, Cin, H, W], else [Cin, H, W] and n is 1 */
	int64_t n, cin, h, w;
	int64_t cout, kh, kw;
	int64_t oh, ow;
	int64_t sh, sw, ph, pw, dh, dw;
	int64_t groups;
	int64_t cg, cog; /* input and output channels per group */
	int64_t k, l; /* rows (cg * kh * kw) and columns (oh * ow) of cols */
};

enum conv_kind { CONV_FWD, CONV_INPUT, CONV_WEIGHT };

struct conv_node {
	struct ag_node node;
	struct conv_geom gm;
	/*
	 * The two tensor operands, in the op's argument order: (input,
	 * weight), (grad_output, weight) or (input, grad_output).  Each is
	 * saved only when the other one requires grad.
	 */
	struct ag_saved saved[2];
};

/* ---- kernels ---- */

/*
 * The output columns ox of kernel column kj that read inside the input,
 * iw = ox * sw + off in [0, w): [*lo, *hi), possibly empty.
 */
static void col_span(const struct conv_geom *gm, int64_t kj, int64_t *off,
		     int64_t *lo, int64_t *hi)
{
	int64_t o = kj * gm->dw - gm->pw, sw = gm->sw;
	int64_t a = o >= 0 ? 0 : (-o + sw - 1) / sw;
	int64_t e = gm->w - o <= 0 ? 0 : (gm->w - o + sw - 1) / sw;

	a = a < gm->ow ? a : gm->ow;
	e = e < gm->ow ? e : gm->ow;
	*off = o;
	*lo = a;
	*hi = e > a ? e : a;
}

/*
 * One row of columns: zeros, then n inputs inc apart from s, then zeros.
 * The zeros are a few at the borders: plain stores, no call.
 */
static inline __attribute__((always_inline)) void
row_in(void *dv, const void *sv, int64_t a, int64_t n, int64_t ow, int64_t inc,
       const bool f32)
{
	if (f32) {
		float *d = dv;
		const float *s = sv;

		for (int64_t i = 0; i < a; i++)
			d[i] = 0;
		if (inc == 1)
			memcpy(d + a, s, (size_t)n * sizeof(*d));
		else
			for (int64_t i = 0; i < n; i++)
				d[a + i] = s[i * inc];
		for (int64_t i = a + n; i < ow; i++)
			d[i] = 0;
	} else {
		double *d = dv;
		const double *s = sv;

		for (int64_t i = 0; i < a; i++)
			d[i] = 0;
		if (inc == 1)
			memcpy(d + a, s, (size_t)n * sizeof(*d));
		else
			for (int64_t i = 0; i < n; i++)
				d[a + i] = s[i * inc];
		for (int64_t i = a + n; i < ow; i++)
			d[i] = 0;
	}
}

static inline __attribute__((always_inline)) void
im2col_t(const struct conv_geom *gm, const void *xv, const int64_t *xs,
	 void *colsv, const bool f32)
{
	int64_t ow = gm->ow, oh = gm->oh, h = gm->h, sh = gm->sh;
	int64_t inc = gm->sw * xs[3], es = f32 ? 4 : 8;
	char *d = colsv;

	for (int64_t c = 0; c < gm->cg; c++) {
		for (int64_t ki = 0; ki < gm->kh; ki++) {
			int64_t ih0 = ki * gm->dh - gm->ph;

			for (int64_t kj = 0; kj < gm->kw; kj++) {
				int64_t off, lo, hi;

				col_span(gm, kj, &off, &lo, &hi);
				for (int64_t oy = 0; oy < oh;
				     oy++, d += ow * es) {
					int64_t ih = oy * sh + ih0;
					/* the first input read: iw = lo sw + off */
					int64_t xo =
						c * xs[1] + ih * xs[2] +
						(lo * gm->sw + off) * xs[3];

					if (ih < 0 || ih >= h || lo == hi)
						row_in(d, xv, ow, 0, ow, 1,
						       f32);
					else
						row_in(d,
						       (const char *)xv +
							       xo * es,
						       lo, hi - lo, ow, inc,
						       f32);
				}
			}
		}
	}
}

/*
 * Stride 1, output rows as long as the input's and rows dense (3x3 at
 * padding 1, the common case): each (channel, kernel row, kernel column)
 * block of columns is the channel's rows ih0.. shifted by off, so one
 * copy fills the block's valid rows; the few columns that read across a
 * row's end, and the rows outside the input, are then zeroed.
 */
static bool im2col_shifts(const struct conv_geom *gm, const int64_t *xs)
{
	return gm->sh == 1 && gm->sw == 1 && gm->ow == gm->w && xs[3] == 1 &&
	       xs[2] == gm->w;
}

/* n elements of es bytes, n small: stores, no call */
static inline void zero_few(char *d, int64_t n, size_t es)
{
	if (es == 4)
		for (int64_t i = 0; i < n; i++)
			((float *)(void *)d)[i] = 0;
	else
		for (int64_t i = 0; i < n; i++)
			((double *)(void *)d)[i] = 0;
}

static void im2col_shifted(const struct conv_geom *gm, const char *x,
			   const int64_t *xs, char *d, size_t es)
{
	int64_t w = gm->w, oh = gm->oh, l = gm->l;

	for (int64_t c = 0; c < gm->cg; c++) {
		for (int64_t ki = 0; ki < gm->kh; ki++) {
			int64_t ih0 = ki * gm->dh - gm->ph;
			/* the output rows oy that read input rows in [0, h) */
			int64_t y0 = ih0 < 0 ? -ih0 : 0;
			int64_t y1 = gm->h - ih0 < oh ? gm->h - ih0 : oh;

			y1 = y1 > y0 ? y1 : y0;
			for (int64_t kj = 0; kj < gm->kw; kj++, d += l * es) {
				int64_t off, lo, hi, n;
				const char *src;

				col_span(gm, kj, &off, &lo, &hi);
				if (y1 == y0 || lo == hi) {
					memset(d, 0, (size_t)l * es);
					continue;
				}
				memset(d, 0, (size_t)(y0 * w + lo) * es);
				/* from (y0, lo) to (y1 - 1, hi - 1): in bounds */
				n = (y1 - y0 - 1) * w + hi - lo;
				src = x + (c * xs[1] + (y0 + ih0) * w + lo +
					   off) * (int64_t)es;
				memcpy(d + (y0 * w + lo) * (int64_t)es, src,
				       (size_t)n * es);
				memset(d + ((y1 - 1) * w + hi) * (int64_t)es, 0,
				       (size_t)(l - (y1 - 1) * w - hi) * es);
				if (lo == 0 && hi == w)
					continue;
				/* the columns that read across a row's end */
				for (int64_t oy = y0; oy < y1 - 1; oy++)
					zero_few(d + (oy * w + hi) *
								 (int64_t)es,
						 w - hi + lo, es);
			}
		}
	}
}

static void im2col(enum ag_dtype dt, const struct conv_geom *gm, const void *x,
		   const int64_t *xs, void *cols)
{
	if (im2col_shifts(gm, xs))
		im2col_shifted(gm, x, xs, cols, ag_dtype_size(dt));
	else if (dt == AG_F32)
		im2col_t(gm, x, xs, cols, true);
	else
		im2col_t(gm, x, xs, cols, false);
}

/* dx += the columns summed back onto the input positions they came from. */
static inline __attribute__((always_inline)) void
col2im_t(const struct conv_geom *gm, const void *colsv, void *dxv,
	 const bool f32)
{
	int64_t ow = gm->ow, oh = gm->oh, h = gm->h, w = gm->w;
	int64_t sh = gm->sh, sw = gm->sw, es = f32 ? 4 : 8;
	const char *s = colsv;

	for (int64_t c = 0; c < gm->cg; c++) {
		for (int64_t ki = 0; ki < gm->kh; ki++) {
			int64_t ih0 = ki * gm->dh - gm->ph;

			for (int64_t kj = 0; kj < gm->kw; kj++) {
				int64_t off, lo, hi;

				col_span(gm, kj, &off, &lo, &hi);
				for (int64_t oy = 0; oy < oh;
				     oy++, s += ow * es) {
					int64_t ih = oy * sh + ih0, n = hi - lo;
					int64_t xo = (c * h + ih) * w +
						     lo * sw + off;

					if (ih < 0 || ih >= h || !n)
						continue;
					if (f32) {
						const float *a =
							(const float *)s + lo;
						float *d = (float *)dxv + xo;

						if (sw == 1)
							for (int64_t i = 0;
							     i < n; i++)
								d[i] += a[i];
						else
							for (int64_t i = 0;
							     i < n; i++)
								d[i * sw] +=
									a[i];
					} else {
						const double *a =
							(const double *)s + lo;
						double *d = (double *)dxv + xo;

						if (sw == 1)
							for (int64_t i = 0;
							     i < n; i++)
								d[i] += a[i];
						else
							for (int64_t i = 0;
							     i < n; i++)
								d[i * sw] +=
									a[i];
					}
				}
			}
		}
	}
}

/*
 * col2im in im2col_shifted's case: each block of columns is added back
 * with one long sum over its valid rows, after the entries that stand
 * for reads across a row's end are zeroed (they belong to no input; dx
 * starts at +0, so adding +0 changes nothing).  cols is overwritten.
 */
static void col2im_shifted(const struct conv_geom *gm, char *cols, char *dx,
			   bool f32)
{
	int64_t w = gm->w, oh = gm->oh, l = gm->l;
	size_t es = f32 ? 4 : 8;
	char *s = cols;

	for (int64_t c = 0; c < gm->cg; c++) {
		for (int64_t ki = 0; ki < gm->kh; ki++) {
			int64_t ih0 = ki * gm->dh - gm->ph;
			int64_t y0 = ih0 < 0 ? -ih0 : 0;
			int64_t y1 = gm->h - ih0 < oh ? gm->h - ih0 : oh;

			for (int64_t kj = 0; kj < gm->kw; kj++, s += l * es) {
				int64_t off, lo, hi, n;
				char *a, *d;

				col_span(gm, kj, &off, &lo, &hi);
				if (y1 <= y0 || lo == hi)
					continue;
				if (lo != 0 || hi != w)
					for (int64_t oy = y0; oy < y1 - 1; oy++)
						zero_few(s + (oy * w +
							      hi) * (int64_t)es,
							 w - hi + lo, es);
				n = (y1 - y0 - 1) * w + hi - lo;
				a = s + (y0 * w + lo) * (int64_t)es;
				d = dx + ((c * gm->h + y0 + ih0) * w + lo +
					  off) * (int64_t)es;
				if (f32)
					ag_k_acc_f32(n,
						     (const float *)(void *)a,
						     1, (float *)(void *)d, 1);
				else
					ag_k_acc_f64(n,
						     (const double *)(void *)a,
						     1, (double *)(void *)d, 1);
			}
		}
	}
}

static void col2im(enum ag_dtype dt, const struct conv_geom *gm, void *cols,
		   void *dx)
{
	if (gm->sh == 1 && gm->sw == 1 && gm->ow == gm->w)
		col2im_shifted(gm, cols, dx, dt == AG_F32);
	else if (dt == AG_F32)
		col2im_t(gm, cols, dx, true);
	else
		col2im_t(gm, cols, dx, false);
}

/* C = op(A) op(B) (+ C when acc); row-major, leading dims in elements. */
static void gemm(enum ag_dtype dt, bool ta, bool tb, int64_t m, int64_t n,
		 int64_t k, const void *a, int64_t lda, const void *b,
		 int64_t ldb, bool acc, void *c, int64_t ldc)
{
	if (dt == AG_F32)
		ag_k_gemm_serial_f32(ta, tb, m, n, k, 1.0f, a, lda, b, ldb,
				     acc ? 1.0f : 0.0f, c, ldc);
	else
		ag_k_gemm_serial_f64(ta, tb, m, n, k, 1.0, a, lda, b, ldb,
				     acc ? 1.0 : 0.0, c, ldc);
}

static void *elem(const void *p, enum ag_dtype dt, int64_t i)
{
	return (char *)p + i * (int64_t)ag_dtype_size(dt);
}

/*
 * A 1x1 kernel at stride 1 without padding reads each input position once,
 * in order: a group's channels of x are its columns, read in place when
 * each channel's H * W values are one dense row.
 */
static bool is_pointwise(const struct conv_geom *gm)
{
	return gm->kh == 1 && gm->kw == 1 && gm->sh == 1 && gm->sw == 1 &&
	       gm->ph == 0 && gm->pw == 0;
}

static bool cols_in_place(const struct conv_geom *gm, const int64_t *xs)
{
	return is_pointwise(gm) && xs[3] == 1 &&
	       (gm->h == 1 || xs[2] == gm->w) &&
	       (gm->cg == 1 || xs[1] >= gm->l);
}

/* What the chunks of one op share. */
struct conv_run {
	const struct conv_geom *gm;
	enum ag_dtype dt;
	const void *x; /* at its first element */
	int64_t xs[4]; /* x's strides, 0 for the batch of an unbatched x */
	const void *w; /* contiguous */
	const void *g; /* contiguous */
	const void *bias;
	int64_t bias_inc;
	/*
	 * Forward with a bias, through columns: the weight with the bias as
	 * an extra column, [groups * cog, k + 1], against columns with an
	 * extra row of ones; kb is k + 1 then, else k.
	 */
	const void *wb;
	int64_t kb;
	void *out; /* contiguous */
	void *parts; /* weight gradient: a partial sum per block */
	int64_t per_block; /* weight gradient: images per block */
	atomic_bool oom;
};

/* A column buffer for one chunk; NULL (with oom set) if none could be had. */
static void *cols_alloc(struct conv_run *r)
{
	size_t es = ag_dtype_size(r->dt), n;
	void *p;

	/* (k + 1) * l * es was checked against SIZE_MAX at setup */
	n = (size_t)r->kb * (size_t)r->gm->l * es;
	/* ag__alloc: a cached block, not fresh pages faulting in each step */
	p = ag__alloc(n ? n : 1);
	if (!p)
		atomic_store(&r->oom, true);
	return p;
}

static void fwd_chunk(int64_t begin, int64_t end, void *arg)
{
	struct conv_run *r = arg;
	const struct conv_geom *gm = r->gm;
	bool direct = cols_in_place(gm, r->xs);
	void *cols = direct ? NULL : cols_alloc(r);

	if (!direct && !cols)
		return;
	if (r->wb) { /* the row of ones the bias column multiplies */
		void *ones = elem(cols, r->dt, gm->k * gm->l);

		if (r->dt == AG_F32)
			ag_k_fill_f32(gm->l, 1.0f, ones, 1);
		else
			ag_k_fill_f64(gm->l, 1.0, ones, 1);
	}
	for (int64_t i = begin; i < end; i++) {
		const void *xi = elem(r->x, r->dt, i * r->xs[0]);

		for (int64_t gi = 0; gi < gm->groups; gi++) {
			const void *xg =
				elem(xi, r->dt, gi * gm->cg * r->xs[1]);
			void *y = elem(r->out, r->dt,
				       (i * gm->cout + gi * gm->cog) * gm->l);
			const void *b = cols;
			int64_t ldb = gm->l;

			if (direct) {
				b = xg;
				ldb = r->xs[1];
			} else {
				im2col(r->dt, gm, xg, r->xs, cols);
			}
			if (r->wb) {
				gemm(r->dt, false, false, gm->cog, gm->l, r->kb,
				     elem(r->wb, r->dt, gi * gm->cog * r->kb),
				     r->kb, cols, gm->l, false, y, gm->l);
				continue;
			}
			if (r->bias) { /* 1x1 in place: no row of ones */
				for (int64_t co = 0; co < gm->cog; co++) {
					int64_t bi = (gi * gm->cog + co) *
						     r->bias_inc;
					void *row = elem(y, r->dt, co * gm->l);

					if (r->dt == AG_F32)
						ag_k_fill_f32(
							gm->l,
							((const float *)
								 r->bias)[bi],
							row, 1);
					else
						ag_k_fill_f64(
							gm->l,
							((const double *)
								 r->bias)[bi],
							row, 1);
				}
			}
			gemm(r->dt, false, false, gm->cog, gm->l, gm->k,
			     elem(r->w, r->dt, gi * gm->cog * gm->k), gm->k, b,
			     ldb, r->bias != NULL, y, gm->l);
		}
	}
	ag__free(cols);
}

static void input_chunk(int64_t begin, int64_t end, void *arg)
{
	struct conv_run *r = arg;
	const struct conv_geom *gm = r->gm;
	bool direct = is_pointwise(gm);
	void *cols = direct ? NULL : cols_alloc(r);
	int64_t img = gm->cin * gm->h * gm->w;

	if (!direct && !cols)
		return;
	for (int64_t i = begin; i < end; i++) {
		void *dx = elem(r->out, r->dt, i * img);

		if (!direct)
			memset(dx, 0, (size_t)img * ag_dtype_size(r->dt));
		for (int64_t gi = 0; gi < gm->groups; gi++) {
			const void *w = elem(r->w, r->dt, gi * gm->cog * gm->k);
			const void *g =
				elem(r->g, r->dt,
				     (i * gm->cout + gi * gm->cog) * gm->l);
			void *dxg =
				elem(dx, r->dt, gi * gm->cg * gm->h * gm->w);

			/* w^T g: k x l, written straight into dx when 1x1 */
			gemm(r->dt, true, false, gm->k, gm->l, gm->cog, w,
			     gm->k, g, gm->l, false, direct ? dxg : cols,
			     gm->l);
			if (!direct)
				col2im(r->dt, gm, cols, dxg);
		}
	}
	ag__free(cols);
}

static void weight_chunk(int64_t begin, int64_t end, void *arg)
{
	struct conv_run *r = arg;
	const struct conv_geom *gm = r->gm;
	bool direct = cols_in_place(gm, r->xs);
	void *cols = direct ? NULL : cols_alloc(r);
	int64_t wn = gm->cout * gm->k;

	if (!direct && !cols)
		return;
	for (int64_t blk = begin; blk < end; blk++) {
		int64_t first = blk * r->per_block;
		int64_t last = first + r->per_block;
		void *dw = r->parts ? elem(r->parts, r->dt, blk * wn) : r->out;

		last = last < gm->n ? last : gm->n;
		for (int64_t i = first; i < last; i++) {
			const void *xi = elem(r->x, r->dt, i * r->xs[0]);

			for (int64_t gi = 0; gi < gm->groups; gi++) {
				const void *xg =
					elem(xi, r->dt, gi * gm->cg * r->xs[1]);
				const void *g = elem(
					r->g, r->dt,
					(i * gm->cout + gi * gm->cog) * gm->l);
				const void *b = cols;
				int64_t ldb = gm->l;

				if (direct) {
					b = xg;
					ldb = r->xs[1];
				} else {
					im2col(r->dt, gm, xg, r->xs, cols);
				}
				/* g cols^T, summed over the block's images */
				gemm(r->dt, false, true, gm->cog, gm->k, gm->l,
				     g, gm->l, b, ldb, i > first,
				     elem(dw, r->dt, gi * gm->cog * gm->k),
				     gm->k);
			}
		}
	}
	ag__free(cols);
}

/* ---- plain (unrecorded) ops ---- */

/* t itself when contiguous, else a dense copy; a new reference. */
static struct ag_tensor *dense(struct ag_tensor *t)
{
	if (!t || ag_tensor_is_contiguous(t))
		return t ? ag_tensor_get(t) : NULL;
	return ag__contiguous_copy(t);
}

static void run_init(struct conv_run *r, const struct conv_geom *gm,
		     enum ag_dtype dt)
{
	memset(r, 0, sizeof(*r));
	r->gm = gm;
	r->dt = dt;
	r->kb = gm->k;
	atomic_init(&r->oom, false);
}

static void set_x(struct conv_run *r, const struct ag_tensor *x)
{
	int lead = x->ndim == 4 ? 0 : 1; /* unbatched: no batch stride */

	r->x = ag__data(x);
	r->xs[0] = 0;
	for (int d = 0; d < x->ndim; d++)
		r->xs[d + lead] = x->strides[d];
}

static struct ag_tensor *new_out(const char *fn, const struct conv_geom *gm,
				 enum ag_dtype dt, int64_t c, int64_t h,
				 int64_t w)
{
	int64_t shape[4] = { gm->n, c, h, w };

	if (gm->batched)
		return ag__tensor_new(fn, dt, 4, shape);
	return ag__tensor_new(fn, dt, 3, shape + 1);
}

static struct ag_tensor *finish_run(struct conv_run *r, struct ag_tensor *out)
{
	if (atomic_load(&r->oom)) {
		ag_tensor_put(out);
		ag__err(AG_ENOMEM,
			"ag_conv2d: out of memory for the column buffer (%ld x %ld elements)",
			(long)r->gm->k, (long)r->gm->l);
		return NULL;
	}
	return out;
}

/*
 * The weight (r->w, dense) with the bias appended to each output channel's
 * row, so that the GEMM adds it: no pass of its own over the output.  NULL
 * with the error set when out of memory.
 */
static void *weight_bias(const struct conv_run *r)
{
	const struct conv_geom *gm = r->gm;
	size_t es = ag_dtype_size(r->dt);
	char *wb = ag__alloc((size_t)(gm->cout * (gm->k + 1)) * es);

	if (!wb)
		return NULL;
	for (int64_t co = 0; co < gm->cout; co++) {
		char *row = wb + (size_t)(co * (gm->k + 1)) * es;

		memcpy(row, elem(r->w, r->dt, co * gm->k), (size_t)gm->k * es);
		memcpy(row + (size_t)gm->k * es,
		       elem(r->bias, r->dt, co * r->bias_inc), es);
	}
	return wb;
}

static struct ag_tensor *conv_fwd(const struct conv_geom *gm,
				  struct ag_tensor *x, struct ag_tensor *w,
				  struct ag_tensor *bias)
{
	struct ag_tensor *wc = dense(w), *out = NULL;
	struct conv_run r;
	void *wb = NULL;

	if (!wc)
		return NULL;
	out = new_out("ag_conv2d", gm, x->dtype, gm->cout, gm->oh, gm->ow);
	if (!out)
		goto done;
	run_init(&r, gm, x->dtype);
	set_x(&r, x);
	r.w = ag__data(wc);
	r.out = ag__data(out);
	if (bias) {
		r.bias = ag__data(bias);
		r.bias_inc = bias->strides[0];
		if (!cols_in_place(gm, r.xs) && !(wb = weight_bias(&r))) {
			ag_tensor_put(out);
			out = NULL;
			goto done;
		}
		r.wb = wb;
		r.kb = wb ? gm->k + 1 : gm->k;
	}
	ag_parallel_for(gm->n, 1, fwd_chunk, &r);
	out = finish_run(&r, out);
done:
	ag__free(wb);
	ag_tensor_put(wc);
	return out;
}

static struct ag_tensor *conv_input(const struct conv_geom *gm,
				    struct ag_tensor *g, struct ag_tensor *w)
{
	struct ag_tensor *gc = dense(g), *wc = dense(w), *out = NULL;
	struct conv_run r;

	if (!gc || !wc)
		goto done;
	out = new_out("ag_conv2d", gm, g->dtype, gm->cin, gm->h, gm->w);
	if (!out)
		goto done;
	run_init(&r, gm, g->dtype);
	r.w = ag__data(wc);
	r.g = ag__data(gc);
	r.out = ag__data(out);
	ag_parallel_for(gm->n, 1, input_chunk, &r);
	out = finish_run(&r, out);
done:
	ag_tensor_put(gc);
	ag_tensor_put(wc);
	return out;
}

/* Blocks of the sum over images: from the shapes only, never the threads. */
static int64_t wgrad_blocks(const struct conv_geom *gm)
{
	int64_t wn = gm->cout * gm->k;
	int64_t nb = gm->n < WGRAD_BLOCKS ? gm->n : WGRAD_BLOCKS;

	while (nb > 1 && nb * wn > WGRAD_PART_ELEMS)
		nb--;
	return nb;
}

static struct ag_tensor *conv_weight(const struct conv_geom *gm,
				     struct ag_tensor *x, struct ag_tensor *g)
{
	struct ag_tensor *gc = dense(g), *out = NULL;
	int64_t shape[4] = { gm->cout, gm->cg, gm->kh, gm->kw };
	int64_t wn = gm->cout * gm->k, nb = wgrad_blocks(gm);
	size_t es = ag_dtype_size(g->dtype);
	struct conv_run r;

	if (!gc)
		return NULL;
	out = ag__tensor_new("ag_conv2d", g->dtype, 4, shape);
	if (!out)
		goto done;
	run_init(&r, gm, g->dtype);
	set_x(&r, x);
	r.g = ag__data(gc);
	r.out = ag__data(out);
	if (nb == 0) { /* no images: nothing to sum */
		memset(r.out, 0, (size_t)wn * es);
		goto done;
	}
	r.per_block = (gm->n + nb - 1) / nb;
	nb = (gm->n + r.per_block - 1) / r.per_block;
	if (nb > 1 && !(r.parts = ag__alloc((size_t)(nb * wn) * es))) {
		atomic_store(&r.oom, true);
		goto fail;
	}
	ag_parallel_for(nb, 1, weight_chunk, &r);
	if (atomic_load(&r.oom))
		goto fail;
	if (r.parts) {
		memcpy(r.out, r.parts, (size_t)wn * es);
		for (int64_t b = 1; b < nb; b++) {
			if (g->dtype == AG_F32)
				ag_k_acc_f32(wn, elem(r.parts, r.dt, b * wn), 1,
					     r.out, 1);
			else
				ag_k_acc_f64(wn, elem(r.parts, r.dt, b * wn), 1,
					     r.out, 1);
		}
	}
	ag__free(r.parts);
	goto done;
fail:
	ag__free(r.parts);
	out = finish_run(&r, out);
done:
	ag_tensor_put(gc);
	return out;
}

/* ---- recording ---- */

static const char *const fwd_saved[] = { "input", "weight" };
static const char *const input_saved[] = { "grad_output", "weight" };
static const char *const weight_saved[] = { "input", "grad_output" };

static int conv_apply(struct ag_node *n, struct ag_tensor **grads,
		      struct ag_tensor **out);

static const struct ag_node_ops conv_ops[] = {
	[CONV_FWD] = {
		.name = "ConvolutionBackward",
		.apply = conv_apply,
		.saved_names = fwd_saved,
	},
	[CONV_INPUT] = {
		.name = "ConvolutionBackwardInputBackward",
		.apply = conv_apply,
		.saved_names = input_saved,
	},
	[CONV_WEIGHT] = {
		.name = "ConvolutionBackwardWeightBackward",
		.apply = conv_apply,
		.saved_names = weight_saved,
	},
};

/*
 * One of the three ops on operands a and b (and the bias for CONV_FWD),
 * recorded when they require grad.
 */
static struct ag_tensor *conv_op(enum conv_kind kind,
				 const struct conv_geom *gm,
				 struct ag_tensor *a, struct ag_tensor *b,
				 struct ag_tensor *bias)
{
	struct ag_tensor *in[3] = { a, b, bias }, *out;
	int nin = kind == CONV_FWD ? 3 : 2;
	struct conv_node *c;

	if (kind == CONV_FWD)
		out = conv_fwd(gm, a, b, bias);
	else if (kind == CONV_INPUT)
		out = conv_input(gm, a, b);
	else
		out = conv_weight(gm, a, b);
	if (!out || !ag__should_record(in, nin))
		return ag__scope_add(out);
	c = (struct conv_node *)ag__node_alloc(&conv_ops[kind], sizeof(*c), 0,
					       1, nin, NULL, 0);
	if (!c)
		goto fail;
	c->node.saved = c->saved;
	c->node.num_saved = 2;
	c->gm = *gm;
	/* each operand is needed only for the other one's gradient */
	if ((ag__requires_grad(b) && ag__save(&c->node, 0, a, false, 0)) ||
	    (ag__requires_grad(a) && ag__save(&c->node, 1, b, false, 0)))
		goto fail;
	return ag__finish(out, &c->node, in, nin, "ag_conv2d");
fail:
	if (c)
		ag__node_put(&c->node);
	ag_tensor_put(out);
	return NULL;
}

/* The bias gradient: g summed over every dim but the channels. */
static struct ag_tensor *bias_grad(const struct conv_geom *gm,
				   struct ag_tensor *g)
{
	int64_t shape[3] = { gm->n, gm->cout, gm->l };
	struct ag_tensor *r = ag_reshape(g, 3, shape), *s, *t;

	s = r ? ag_sum_dim(r, 2, false) : NULL;
	t = s ? ag_sum_dim(s, 0, false) : NULL;
	ag_tensor_put(r);
	ag_tensor_put(s);
	return t;
}

static int conv_apply(struct ag_node *n, struct ag_tensor **grads,
		      struct ag_tensor **out)
{
	struct conv_node *c = ag_container_of(n, struct conv_node, node);
	enum conv_kind kind = (enum conv_kind)(n->ops - conv_ops);
	struct ag_tensor *g = grads[0], *a = NULL, *b = NULL;
	bool need0 = ag__grad_wanted(n, 0), need1 = ag__grad_wanted(n, 1);
	int rc = 0;

	if (!g)
		return 0;
	if ((need1 && !(a = ag__unpack(n, 0))) ||
	    (need0 && !(b = ag__unpack(n, 1)))) {
		rc = -ag_errcode();
		goto out;
	}
	switch (kind) {
	case CONV_FWD: /* a = x, b = w */
		if (need0 &&
		    !(out[0] = conv_op(CONV_INPUT, &c->gm, g, b, NULL)))
			goto err;
		if (need1 &&
		    !(out[1] = conv_op(CONV_WEIGHT, &c->gm, a, g, NULL)))
			goto err;
		if (ag__grad_wanted(n, 2) && !(out[2] = bias_grad(&c->gm, g)))
			goto err;
		break;
	case CONV_INPUT: /* a = grad_output, b = w; g is dx's gradient */
		if (need0 && !(out[0] = conv_op(CONV_FWD, &c->gm, g, b, NULL)))
			goto err;
		if (need1 &&
		    !(out[1] = conv_op(CONV_WEIGHT, &c->gm, g, a, NULL)))
			goto err;
		break;
	case CONV_WEIGHT: /* a = x, b = grad_output; g is dw's gradient */
		if (need0 &&
		    !(out[0] = conv_op(CONV_INPUT, &c->gm, b, g, NULL)))
			goto err;
		if (need1 && !(out[1] = conv_op(CONV_FWD, &c->gm, a, g, NULL)))
			goto err;
		break;
	}
	goto out;
err:
	rc = -ag_errcode();
out:
	ag_tensor_put(a);
	ag_tensor_put(b);
	return rc;
}

/* ---- checks ---- */

/* An option pair: 0 means dflt; below lo is refused. */
static int opt_pair(const char *what, const int64_t *v, int64_t dflt,
		    int64_t lo, int64_t *out)
{
	for (int i = 0; i < 2; i++) {
		int64_t x = v ? v[i] : dflt;

		if (x == 0 && dflt)
			x = dflt;
		if (x < lo)
			return ag__err(
				AG_EINVAL,
				"ag_conv2d: %s must be %s, got (%ld, %ld)",
				what, lo ? "positive" : "non-negative",
				(long)(v ? v[0] : dflt),
				(long)(v ? v[1] : dflt));
		out[i] = x;
	}
	return 0;
}

static int check_opts(const struct ag_conv2d_opts *o, struct conv_geom *gm)
{
	int64_t s[2], p[2], d[2];

	if (opt_pair("stride", o ? o->stride : NULL, 1, 1, s) ||
	    opt_pair("padding", o ? o->padding : NULL, 0, 0, p) ||
	    opt_pair("dilation", o ? o->dilation : NULL, 1, 1, d))
		return -AG_EINVAL;
	gm->groups = o && o->groups ? o->groups : 1;
	if (gm->groups < 1)
		return ag__err(AG_EINVAL,
			       "ag_conv2d: groups must be positive, got %ld",
			       (long)gm->groups);
	gm->sh = s[0];
	gm->sw = s[1];
	gm->ph = p[0];
	gm->pw = p[1];
	gm->dh = d[0];
	gm->dw = d[1];
	return 0;
}

/*
 * Output size along one dim, overflow-checked: (in + 2 pad - (dil (k - 1)
 * + 1)) / stride + 1; -1 when the kernel is larger than the padded input.
 */
static int out_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d,
		    int64_t *padded, int64_t *ext, int64_t *out)
{
	if (__builtin_mul_overflow(p, 2, padded) ||
	    __builtin_add_overflow(*padded, in, padded) ||
	    __builtin_mul_overflow(d, k - 1, ext) ||
	    __builtin_add_overflow(*ext, 1, ext))
		return -1;
	*out = *padded < *ext ? -1 : (*padded - *ext) / s + 1;
	return 0;
}

static int check_shapes(struct ag_tensor *x, struct ag_tensor *w,
			struct ag_tensor *b, struct conv_geom *gm)
{
	struct ag__shape_str xs, ws, bs;
	int lead;
	int64_t ph, pw, eh, ew;
	size_t cols;

	if (x->ndim != 3 && x->ndim != 4)
		return ag__err(
			AG_ESHAPE,
			"ag_conv2d: expected 3-D (unbatched) or 4-D (batched) input, but got input of size %s",
			ag__shape_of(&xs, x));
	if (w->ndim != 4)
		return ag__err(
			AG_ESHAPE,
			"ag_conv2d: expected a 4-D weight [out_channels, in_channels / groups, kH, kW], but got weight of size %s",
			ag__shape_of(&ws, w));
	gm->batched = x->ndim == 4;
	lead = gm->batched ? 1 : 0;
	gm->n = gm->batched ? x->shape[0] : 1;
	gm->cin = x->shape[lead];
	gm->h = x->shape[lead + 1];
	gm->w = x->shape[lead + 2];
	gm->cout = w->shape[0];
	gm->cg = w->shape[1];
	gm->kh = w->shape[2];
	gm->kw = w->shape[3];
	if (gm->cout % gm->groups)
		return ag__err(
			AG_ESHAPE,
			"ag_conv2d: given groups=%ld, expected weight to be divisible by %ld at dimension 0, but got weight of size %s",
			(long)gm->groups, (long)gm->groups,
			ag__shape_of(&ws, w));
	if (gm->cin != gm->cg * gm->groups)
		return ag__err(
			AG_ESHAPE,
			"ag_conv2d: given groups=%ld, weight of size %s, expected input%s to have %ld channels, but got %ld channels instead",
			(long)gm->groups, ag__shape_of(&ws, w),
			ag__shape_of(&xs, x), (long)(gm->cg * gm->groups),
			(long)gm->cin);
	if (b && (b->ndim != 1 || b->shape[0] != gm->cout))
		return ag__err(
			AG_ESHAPE,
			"ag_conv2d: given weight of size %s, expected bias to be 1-dimensional with %ld elements, but got bias of size %s instead",
			ag__shape_of(&ws, w), (long)gm->cout,
			ag__shape_of(&bs, b));
	if (gm->kh < 1 || gm->kw < 1)
		return ag__err(
			AG_ESHAPE,
			"ag_conv2d: kernel size must be positive, got weight of size %s",
			ag__shape_of(&ws, w));
	if (out_size(gm->h, gm->kh, gm->sh, gm->ph, gm->dh, &ph, &eh,
		     &gm->oh) ||
	    out_size(gm->w, gm->kw, gm->sw, gm->pw, gm->dw, &pw, &ew, &gm->ow))
		return ag__err(
			AG_EINVAL,
			"ag_conv2d: padding or dilation too large (integer overflow) for input %s and weight %s",
			ag__shape_of(&xs, x), ag__shape_of(&ws, w));
	if (gm->oh < 0 || gm->ow < 0)
		return ag__err(
			AG_ESHAPE,
			"ag_conv2d: calculated padded input size per channel: (%ld x %ld). Kernel size: (%ld x %ld). Kernel size can't be greater than actual input size",
			(long)ph, (long)pw, (long)eh, (long)ew);
	gm->cog = gm->cout / gm->groups;
	gm->k = gm->cg * gm->kh * gm->kw; /* at most w's numel */
	if (__builtin_mul_overflow(gm->oh, gm->ow, &gm->l) ||
	    __builtin_mul_overflow((size_t)gm->k + 1, (size_t)gm->l, &cols) ||
	    __builtin_mul_overflow(cols, ag_dtype_size(x->dtype), &cols))
		return ag__err(
			AG_EINVAL,
			"ag_conv2d: output %ld x %ld with %ld rows of patches per group is too large for input %s and weight %s",
			(long)gm->oh, (long)gm->ow, (long)gm->k,
			ag__shape_of(&xs, x), ag__shape_of(&ws, w));
	return 0;
}

struct ag_tensor *ag_conv2d(struct ag_tensor *x, struct ag_tensor *w,
			    struct ag_tensor *b, const struct ag_conv2d_opts *o)
{
	struct conv_geom gm;

	if (!x)
		return ag__null_arg("ag_conv2d", "x");
	if (!w)
		return ag__null_arg("ag_conv2d", "w");
	if (ag__check_same_dtype("ag_conv2d", x, w) ||
	    (b && ag__check_same_dtype("ag_conv2d", x, b)))
		return NULL;
	memset(&gm, 0, sizeof(gm));
	if (check_opts(o, &gm) || check_shapes(x, w, b, &gm))
		return NULL;
	return conv_op(CONV_FWD, &gm, x, w, b);
}
