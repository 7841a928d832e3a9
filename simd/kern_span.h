/* SPDX-License-Identifier: MIT */
/*
 * Span drivers: the elementwise kernels and their derivatives over
 * (base, stride) spans, with the chunking and pairwise sums they use.
 * Part of kern_tmpl.h, included from there with its T, V, W and F;
 * no include guard on purpose.
 */

/*
 * Contiguous loops: whole vectors, then one masked tail.  Each takes the
 * arrays it walks as arguments and binds, for EXPR, the lanes it loaded:
 * v (LOOP1); gv, xv, yv (LOOPB); av, bv (LOOP2); gv, av, bv (LOOP2B).
 */
#define LOOP1(n, X, Y, EXPR)                                 \
	do {                                                 \
		int64_t i_ = 0;                              \
		for (; i_ + W <= (n); i_ += W) {             \
			VT v = V(load)((X) + i_);            \
			V(store)((Y) + i_, (EXPR));          \
		}                                            \
		if (i_ < (n)) {                              \
			VT v = V(loadn)((X) + i_, (n)-i_);   \
			V(storen)((Y) + i_, (EXPR), (n)-i_); \
		}                                            \
	} while (0)

#ifndef AG_K_POW_KIND
#define AG_K_POW_KIND
enum pow_kind {
	POW_GEN,
	POW_0,
	POW_1,
	POW_2,
	POW_3,
	POW_H,
	POW_M1,
	POW_M2,
	POW_MH
};
#endif

static enum pow_kind F(pow_kind)(double e)
{
	/* The exponents torch special-cases, so results match it. */
	if (e == 0)
		return POW_0;
	if (e == 1)
		return POW_1;
	if (e == 2)
		return POW_2;
	if (e == 3)
		return POW_3;
	if (e == 0.5)
		return POW_H;
	if (e == -1)
		return POW_M1;
	if (e == -2)
		return POW_M2;
	if (e == -0.5)
		return POW_MH;
	return POW_GEN;
}

static void F(pow_c)(int64_t n, const T *x, T *y, T e)
{
	VT one = V(set1)(1);
	VT ve = V(set1)(e);

	switch (F(pow_kind)(e)) {
	case POW_0:
		LOOP1(n, x, y, (v = one));
		break;
	case POW_1:
		LOOP1(n, x, y, v);
		break;
	case POW_2:
		LOOP1(n, x, y, V(mul)(v, v));
		break;
	case POW_3:
		LOOP1(n, x, y, V(mul)(V(mul)(v, v), v));
		break;
	case POW_H:
		LOOP1(n, x, y, V(sqrt)(v));
		break;
	case POW_M1:
		LOOP1(n, x, y, V(div)(one, v));
		break;
	case POW_M2:
		LOOP1(n, x, y, V(div)(one, V(mul)(v, v)));
		break;
	case POW_MH:
		LOOP1(n, x, y, V(div)(one, V(sqrt)(v)));
		break;
	default:
		LOOP1(n, x, y, V(pow)(v, ve));
		break;
	}
}

/*
 * sin and cos forward.  A call in the loop (SLEEF, for the rare |x| >
 * 8192) costs every vector even when not taken: no vector register
 * survives a call, so the compiler reloads or spills what the loop keeps
 * in them (7 % of the f32 kernel in L1).  So the loop only notes whether
 * any lane was far, and a second pass redoes those vectors from x.  In
 * place (y == x) the input is gone by then: there each vector is fixed
 * as it goes.
 */
static void F(sincos_c)(int64_t n, const T *x, T *y, bool cosine)
{
	V(m) far = V(lt)(V(set1)(0), V(set1)(0));
	int64_t i;

	if (sizeof(T) == 8 || x == y) {
		LOOP1(n, x, y, cosine ? F(v_cos)(v) : F(v_sin)(v));
		return;
	}
	LOOP1(n, x, y,
	      (far = V(or)(far, F(v_sinf_far)(v)), F(v_sinf_core)(v, cosine)));
	if (!V(any)(far))
		return;
	for (i = 0; i < n; i += W) {
		int64_t len = n - i < W ? n - i : W;
		VT v = V(loadn)(x + i, len);
		V(m) m = F(v_sinf_far)(v);
		VT r;

		(void)len; /* the generic loadn ignores it */
		if (!V(any)(m))
			continue;
		r = V(sel)(m, cosine ? V(cos)(v) : V(sin)(v),
			   V(loadn)(y + i, len));
		V(storen)(y + i, r, len);
	}
}

static void F(unary_c)(enum ag_k_unary op, int64_t n, const T *x, T *y, T p0,
		       T p1)
{
	VT one = V(set1)(1);
	VT vp0 = V(set1)(p0);
	VT vp1 = V(set1)(p1);

	switch (op) {
	case AG_K_NEG:
		LOOP1(n, x, y, V(neg)(v));
		break;
	case AG_K_ABS:
		LOOP1(n, x, y, V(abs)(v));
		break;
	case AG_K_EXP:
		LOOP1(n, x, y, F(v_exp)(v));
		break;
	case AG_K_EXPM1:
		LOOP1(n, x, y, V(expm1)(v));
		break;
	case AG_K_LOG:
		LOOP1(n, x, y, V(log)(v));
		break;
	case AG_K_LOG1P:
		LOOP1(n, x, y, F(v_log1p)(v));
		break;
	case AG_K_SQRT:
		LOOP1(n, x, y, V(sqrt)(v));
		break;
	case AG_K_RSQRT:
		LOOP1(n, x, y, V(div)(one, V(sqrt)(v)));
		break;
	case AG_K_SQUARE:
		LOOP1(n, x, y, V(mul)(v, v));
		break;
	case AG_K_RECIPROCAL:
		LOOP1(n, x, y, V(div)(one, v));
		break;
	case AG_K_SIN:
	case AG_K_COS:
		F(sincos_c)(n, x, y, op == AG_K_COS);
		break;
	case AG_K_TAN:
		LOOP1(n, x, y, V(tan)(v));
		break;
	case AG_K_TANH:
		LOOP1(n, x, y, F(v_tanh)(v));
		break;
	case AG_K_SIGMOID:
		LOOP1(n, x, y, F(v_sigmoid)(v));
		break;
	case AG_K_RELU:
		LOOP1(n, x, y, F(v_relu)(v));
		break;
	case AG_K_GELU:
		LOOP1(n, x, y, V(mul)(v, F(v_phi)(v)));
		break;
	case AG_K_SILU:
		LOOP1(n, x, y, F(v_silu)(v));
		break;
	case AG_K_SOFTPLUS:
		LOOP1(n, x, y, F(v_softplus)(v));
		break;
	case AG_K_ERF:
		LOOP1(n, x, y, V(erf)(v));
		break;
	case AG_K_ATAN:
		LOOP1(n, x, y, V(atan)(v));
		break;
	case AG_K_CLAMP:
		LOOP1(n, x, y, F(v_clamp)(v, vp0, vp1));
		break;
	case AG_K_LEAKY_RELU:
		LOOP1(n, x, y, V(sel)(V(gt)(v, V(set1)(0)), v, V(mul)(v, vp0)));
		break;
	case AG_K_POW_SCALAR:
		F(pow_c)(n, x, y, p0);
		break;
	case AG_K_ADD_SCALAR:
		LOOP1(n, x, y, V(add)(v, vp0));
		break;
	case AG_K_MUL_SCALAR:
		LOOP1(n, x, y, V(mul)(v, vp0));
		break;
	case AG_K_RSUB_SCALAR:
		LOOP1(n, x, y, V(sub)(vp0, v));
		break;
	case AG_K_UNARY_COUNT:
		break;
	}
}

/* Pairwise sums.  A block of up to SUM_BLK elements is summed in four
 * vector accumulators (f32 widened to f64 lanes first); blocks are combined
 * by halving, so the error is O((SUM_BLK / (4 W) + log2 n) u sum |x|). */
#define SUM_BLK 256

static double F(sum_block)(int64_t n, const T *x)
{
	vw_t a0 = vw_zero(), a1 = vw_zero(), a2 = vw_zero(), a3 = vw_zero();
	double s;
	int64_t i = 0;

#if W == 1 || VW_W == W
	/* f64, or one-lane generic: the elements are the wide lanes. */
	for (; i + 4 * VW_W <= n; i += 4 * VW_W) {
		a0 = vw_add(a0, (vw_t)V(load)(x + i));
		a1 = vw_add(a1, (vw_t)V(load)(x + i + VW_W));
		a2 = vw_add(a2, (vw_t)V(load)(x + i + 2 * VW_W));
		a3 = vw_add(a3, (vw_t)V(load)(x + i + 3 * VW_W));
	}
#else
	for (; i + 4 * VW_W <= n; i += 4 * VW_W) {
		a0 = vw_add(a0, vw_loadf((const float *)x + i));
		a1 = vw_add(a1, vw_loadf((const float *)x + i + VW_W));
		a2 = vw_add(a2, vw_loadf((const float *)x + i + 2 * VW_W));
		a3 = vw_add(a3, vw_loadf((const float *)x + i + 3 * VW_W));
	}
#endif
	s = vw_hsum(vw_add(vw_add(a0, a1), vw_add(a2, a3)));
	for (; i < n; i++)
		s += (double)x[i];
	return s;
}

static double F(sum_c)(int64_t n, const T *x)
{
	int64_t h;

	if (n <= SUM_BLK)
		return F(sum_block)(n, x);
	/* Split at a block boundary so every leaf but the last is full. */
	h = ((n / SUM_BLK + 1) / 2) * SUM_BLK;
	return F(sum_c)(h, x) + F(sum_c)(n - h, x + h);
}

/* Chunked operands. */
struct F(src) {
	const T *p;
	int64_t inc;
	T *buf;
};

static void F(src_init)(struct F(src) * s, const T *p, int64_t inc, T *buf,
			int64_t n)
{
	int64_t j;

	s->p = p;
	s->inc = inc;
	s->buf = buf;
	if (p && inc == 0) {
		T v = p[0];

		for (j = 0; j < n && j < CH; j++)
			buf[j] = v;
	}
}

static const T *F(src_get)(const struct F(src) * s, int64_t i, int64_t len)
{
	const T *p;
	int64_t j;

	if (!s->p)
		return NULL;
	if (s->inc == 1)
		return s->p + i;
	if (s->inc == 0)
		return s->buf;
	p = s->p + i * s->inc;
	for (j = 0; j < len; j++)
		s->buf[j] = p[j * s->inc];
	return s->buf;
}

struct F(dst) {
	T *p;
	int64_t inc;
	T *buf;
	bool reduce;
	double acc;
};

static void F(dst_init)(struct F(dst) * d, T *p, int64_t inc, T *buf,
			bool reduce)
{
	d->p = p;
	d->inc = inc;
	d->buf = buf;
	d->reduce = reduce && inc == 0 && p;
	d->acc = 0;
}

static T *F(dst_get)(const struct F(dst) * d, int64_t i)
{
	if (!d->p)
		return NULL;
	return d->inc == 1 ? d->p + i : d->buf;
}

static void F(dst_put)(struct F(dst) * d, int64_t i, int64_t len)
{
	T *p;
	int64_t j;

	if (!d->p || d->inc == 1)
		return;
	if (d->reduce) {
		d->acc += F(sum_c)(len, d->buf);
		return;
	}
	p = d->p + i * d->inc;
	for (j = 0; j < len; j++)
		p[j * d->inc] = d->buf[j];
}

static void F(dst_done)(struct F(dst) * d)
{
	if (d->reduce)
		d->p[0] += (T)d->acc;
}

#define CHLEN(i, n) ((n) - (i) < CH ? (n) - (i) : CH)

static void F(unary)(enum ag_k_unary op, int64_t n, const T *x, int64_t incx,
		     T *y, int64_t incy, const struct ag_k_params *p)
{
	_Alignas(64) T bx[CH];
	_Alignas(64) T by[CH];
	T p0 = p ? (T)p->p0 : 0;
	T p1 = p ? (T)p->p1 : 0;
	struct F(src) sx;
	struct F(dst) dy;
	int64_t i;

	if (n <= 0)
		return;
	if (incx == 1 && incy == 1) {
		F(unary_c)(op, n, x, y, p0, p1);
		return;
	}
	if (incx == 0) {
		/* One value for the whole span. */
		F(unary_c)(op, 1, x, by, p0, p1);
		for (i = 0; i < n; i++)
			y[i * incy] = by[0];
		return;
	}
	F(src_init)(&sx, x, incx, bx, n);
	F(dst_init)(&dy, y, incy, by, false);
	for (i = 0; i < n; i += CH) {
		int64_t len = CHLEN(i, n);

		F(unary_c)
		(op, len, F(src_get)(&sx, i, len), F(dst_get)(&dy, i), p0, p1);
		F(dst_put)(&dy, i, len);
	}
}

/* Derivative loops: g always, x or y as the op needs. */
#define LOOPB(n, G, X, Y, GX, LX, LY, EXPR)                  \
	do {                                                 \
		int64_t i_ = 0;                              \
		for (; i_ + W <= (n); i_ += W) {             \
			VT gv = V(load)((G) + i_);           \
			VT xv = gv, yv = gv;                 \
			if (LX)                              \
				xv = V(load)((X) + i_);      \
			if (LY)                              \
				yv = V(load)((Y) + i_);      \
			(void)xv;                            \
			(void)yv;                            \
			V(store)((GX) + i_, (EXPR));         \
		}                                            \
		if (i_ < (n)) {                              \
			int64_t r_ = (n)-i_;                 \
			VT gv = V(loadn)((G) + i_, r_);      \
			(void)r_;                            \
			VT xv = gv, yv = gv;                 \
			if (LX)                              \
				xv = V(loadn)((X) + i_, r_); \
			if (LY)                              \
				yv = V(loadn)((Y) + i_, r_); \
			(void)xv;                            \
			(void)yv;                            \
			V(storen)((GX) + i_, (EXPR), r_);    \
		}                                            \
	} while (0)

#define LOOPG(n, G, X, Y, GX, EXPR) LOOPB(n, G, X, Y, GX, 0, 0, EXPR)
#define LOOPX(n, G, X, Y, GX, EXPR) LOOPB(n, G, X, Y, GX, 1, 0, EXPR)
#define LOOPY(n, G, X, Y, GX, EXPR) LOOPB(n, G, X, Y, GX, 0, 1, EXPR)

static void F(pow_bwd_c)(int64_t n, const T *g, const T *x, T *gx, T e)
{
	VT ve = V(set1)(e);
	VT vem1 = V(set1)(e - 1);
	VT two = V(set1)(2);
	VT three = V(set1)(3);
	VT hf = V(set1)(0.5);
	const T *y = NULL; /* LOOPX takes a y it never reads */

	/* torch: exponent 0 gives zeros; else g * e * x^(e-1), with the
	 * power computed as the forward special cases would. */
	switch (F(pow_kind)(e)) {
	case POW_0:
		LOOPG(n, g, x, y, gx, V(set1)(0));
		break;
	case POW_1:
		LOOPG(n, g, x, y, gx, gv);
		break;
	case POW_2:
		LOOPX(n, g, x, y, gx, V(mul)(gv, V(mul)(two, xv)));
		break;
	case POW_3:
		LOOPX(n, g, x, y, gx,
		      V(mul)(gv, V(mul)(three, V(mul)(xv, xv))));
		break;
	case POW_H:
		LOOPX(n, g, x, y, gx,
		      V(mul)(gv, V(mul)(hf, V(pow)(xv, V(set1)(-0.5)))));
		break;
	default:
		LOOPX(n, g, x, y, gx, V(mul)(gv, V(mul)(ve, V(pow)(xv, vem1))));
		break;
	}
}

static void F(unary_bwd_c)(enum ag_k_unary op, int64_t n, const T *g,
			   const T *x, const T *y, T *gx, T p0, T p1)
{
	VT zero = V(set1)(0);
	VT one = V(set1)(1);
	VT two = V(set1)(2);
	VT vp0 = V(set1)(p0);
	VT vp1 = V(set1)(p1);

	switch (op) {
	case AG_K_NEG:
		LOOPG(n, g, x, y, gx, V(neg)(gv));
		break;
	case AG_K_ABS:
		/* sign(x), 0 at 0 and NaN, as torch's sgn for reals */
		LOOPX(n, g, x, y, gx,
		      V(sel)(V(gt)(xv, zero), gv,
			     V(sel)(V(lt)(xv, zero), V(neg)(gv), zero)));
		break;
	case AG_K_EXP:
		LOOPY(n, g, x, y, gx, V(mul)(gv, yv));
		break;
	case AG_K_EXPM1:
		LOOPY(n, g, x, y, gx, V(mul)(gv, V(add)(yv, one)));
		break;
	case AG_K_LOG:
		LOOPX(n, g, x, y, gx, V(div)(gv, xv));
		break;
	case AG_K_LOG1P:
		LOOPX(n, g, x, y, gx, V(div)(gv, V(add)(xv, one)));
		break;
	case AG_K_SQRT:
		LOOPY(n, g, x, y, gx, V(div)(gv, V(mul)(two, yv)));
		break;
	case AG_K_RSQRT:
		/* torch: -0.5 * g * y^3 */
		LOOPY(n, g, x, y, gx,
		      V(mul)(V(mul)(V(set1)(-0.5), gv),
			     V(mul)(V(mul)(yv, yv), yv)));
		break;
	case AG_K_SQUARE:
		LOOPX(n, g, x, y, gx, V(mul)(gv, V(mul)(two, xv)));
		break;
	case AG_K_RECIPROCAL:
		LOOPY(n, g, x, y, gx, V(mul)(V(neg)(gv), V(mul)(yv, yv)));
		break;
	case AG_K_SIN:
		LOOPX(n, g, x, y, gx, V(mul)(gv, F(v_cos)(xv)));
		break;
	case AG_K_COS:
		LOOPX(n, g, x, y, gx, V(mul)(gv, V(neg)(F(v_sin)(xv))));
		break;
	case AG_K_TAN:
		LOOPY(n, g, x, y, gx, V(mul)(gv, V(fma)(yv, yv, one)));
		break;
	case AG_K_TANH:
		LOOPY(n, g, x, y, gx, V(mul)(gv, V(sub)(one, V(mul)(yv, yv))));
		break;
	case AG_K_SIGMOID:
		LOOPY(n, g, x, y, gx, V(mul)(gv, V(mul)(yv, V(sub)(one, yv))));
		break;
	case AG_K_RELU:
		/* torch: result <= 0 ? 0 : g, so NaN passes the gradient */
		LOOPY(n, g, x, y, gx, V(sel)(V(le)(yv, zero), zero, gv));
		break;
	case AG_K_GELU:
		/* Phi(x) + x phi(x), phi(x) = exp(-x^2 / 2) / sqrt(2 pi) */
		LOOPX(n, g, x, y, gx,
		      V(mul)(gv,
			     V(fma)(V(mul)(xv, V(set1)(0.39894228040143267794)),
				    V(exp)(V(mul)(V(mul)(xv, xv),
						  V(set1)(-0.5))),
				    F(v_phi)(xv))));
		break;
	case AG_K_SILU:
		/* torch: g * s * (1 + x * (1 - s)) */
		LOOPX(n, g, x, y, gx,
		      V(mul)(V(mul)(gv, F(v_sigmoid)(xv)),
			     V(fma)(xv, V(sub)(one, F(v_sigmoid)(xv)), one)));
		break;
	case AG_K_SOFTPLUS:
		/* torch: x > 20 ? g : g * z / (z + 1), z = exp(x) */
		LOOPX(n, g, x, y, gx,
		      V(sel)(V(gt)(xv, V(set1)(20)), gv,
			     V(mul)(gv, V(div)(V(exp)(xv),
					       V(add)(V(exp)(xv), one)))));
		break;
	case AG_K_ERF:
		/* 2 / sqrt(pi) exp(-x^2) */
		LOOPX(n, g, x, y, gx,
		      V(mul)(V(mul)(gv, V(set1)(1.12837916709551257390)),
			     V(exp)(V(neg)(V(mul)(xv, xv)))));
		break;
	case AG_K_ATAN:
		LOOPX(n, g, x, y, gx, V(div)(gv, V(fma)(xv, xv, one)));
		break;
	case AG_K_CLAMP:
		/* torch 1.13: the gradient passes where lo <= x <= hi */
		LOOPX(n, g, x, y, gx,
		      V(sel)(V(and)(V(ge)(xv, vp0), V(le)(xv, vp1)), gv, zero));
		break;
	case AG_K_LEAKY_RELU:
		LOOPX(n, g, x, y, gx,
		      V(sel)(V(gt)(xv, zero), gv, V(mul)(gv, vp0)));
		break;
	case AG_K_POW_SCALAR:
		F(pow_bwd_c)(n, g, x, gx, p0);
		break;
	case AG_K_ADD_SCALAR:
		LOOPG(n, g, x, y, gx, gv);
		break;
	case AG_K_MUL_SCALAR:
		LOOPG(n, g, x, y, gx, V(mul)(gv, vp0));
		break;
	case AG_K_RSUB_SCALAR:
		LOOPG(n, g, x, y, gx, V(neg)(gv));
		break;
	case AG_K_UNARY_COUNT:
		break;
	}
}

static void F(unary_bwd)(enum ag_k_unary op, int64_t n, const T *g,
			 int64_t incg, const T *x, int64_t incx, const T *y,
			 int64_t incy, T *gx, int64_t incgx,
			 const struct ag_k_params *p)
{
	_Alignas(64) T bg[CH];
	_Alignas(64) T bx[CH];
	_Alignas(64) T by[CH];
	_Alignas(64) T bo[CH];
	T p0 = p ? (T)p->p0 : 0;
	T p1 = p ? (T)p->p1 : 0;
	unsigned needs = ag_k_unary_bwd_needs(op);
	struct F(src) sg, sx, sy;
	struct F(dst) dgx;
	int64_t i;

	if (n <= 0)
		return;
	if (!(needs & AG_K_NEEDS_X))
		x = NULL;
	if (!(needs & AG_K_NEEDS_Y))
		y = NULL;
	if (incg == 1 && (!x || incx == 1) && (!y || incy == 1) && incgx == 1) {
		F(unary_bwd_c)(op, n, g, x, y, gx, p0, p1);
		return;
	}
	F(src_init)(&sg, g, incg, bg, n);
	F(src_init)(&sx, x, incx, bx, n);
	F(src_init)(&sy, y, incy, by, n);
	F(dst_init)(&dgx, gx, incgx, bo, true);
	for (i = 0; i < n; i += CH) {
		int64_t len = CHLEN(i, n);

		F(unary_bwd_c)
		(op, len, F(src_get)(&sg, i, len), F(src_get)(&sx, i, len),
		 F(src_get)(&sy, i, len), F(dst_get)(&dgx, i), p0, p1);
		F(dst_put)(&dgx, i, len);
	}
	F(dst_done)(&dgx);
}

/*
 * Binary outputs of at least AG_K_NT_MIN bytes are written with streaming
 * (non-temporal) stores.  An ordinary store to a line that is not cached
 * first reads it (read for ownership), so x * w over buffers far larger
 * than the caches moves four streams for three; streaming stores skip
 * that read.  But the output then is not in cache for the op that reads
 * it next, which costs more than it saves for outputs the caches could
 * have kept: with x * w followed by a sum of the product (one thread,
 * AVX-512, Zen 4) streaming lost at 1 MiB, tied at 2 MiB and won from
 * 4 MiB (mul alone: 40 against 27 GB/s at 16 MiB).  The unary kernels
 * keep ordinary stores: streaming measured slower for every one tried
 * (exp, sin, tanh, neg; 2^22 elements, inputs and outputs hot or cold).
 * A part of a split kernel is judged by its own length.
 */
#ifndef AG_K_NT_MIN
#define AG_K_NT_MIN (4 << 20)
#endif

/* -1: ordinary stores; else the elements before y + h is vector-aligned
 * (0 .. W - 1), which LOOP2 writes with one masked store first. */
static inline int64_t F(nt_head)(const T *y, int64_t n)
{
	const uintptr_t al = W * sizeof(T);
	uintptr_t a = (uintptr_t)y;

	if (W == 1 || n < (int64_t)(AG_K_NT_MIN / sizeof(T)) || a % sizeof(T))
		return -1;
	return (int64_t)(((al - a % al) % al) / sizeof(T));
}

/* Two loops rather than a branch per vector: the branch cost the L1-sized
 * products ~10 %. */
#define LOOP2(n, A, B, Y, EXPR)                              \
	do {                                                 \
		int64_t i_ = 0, h_ = F(nt_head)((Y), (n));   \
		if (h_ > 0) {                                \
			VT av = V(loadn)((A), h_);           \
			VT bv = V(loadn)((B), h_);           \
			V(storen)((Y), (EXPR), h_);          \
			i_ = h_;                             \
		}                                            \
		if (h_ >= 0) {                               \
			for (; i_ + W <= (n); i_ += W) {     \
				VT av = V(load)((A) + i_);   \
				VT bv = V(load)((B) + i_);   \
				V(stream)((Y) + i_, (EXPR)); \
			}                                    \
		} else {                                     \
			for (; i_ + W <= (n); i_ += W) {     \
				VT av = V(load)((A) + i_);   \
				VT bv = V(load)((B) + i_);   \
				V(store)((Y) + i_, (EXPR));  \
			}                                    \
		}                                            \
		if (i_ < (n)) {                              \
			VT av = V(loadn)((A) + i_, (n)-i_);  \
			VT bv = V(loadn)((B) + i_, (n)-i_);  \
			V(storen)((Y) + i_, (EXPR), (n)-i_); \
		}                                            \
		if (h_ >= 0)                                 \
			V(sfence)();                         \
	} while (0)

static void F(binary_c)(enum ag_k_binary op, int64_t n, const T *a, const T *b,
			T *y)
{
	switch (op) {
	case AG_K_ADD:
		LOOP2(n, a, b, y, V(add)(av, bv));
		break;
	case AG_K_SUB:
		LOOP2(n, a, b, y, V(sub)(av, bv));
		break;
	case AG_K_MUL:
		LOOP2(n, a, b, y, V(mul)(av, bv));
		break;
	case AG_K_DIV:
		LOOP2(n, a, b, y, V(div)(av, bv));
		break;
	case AG_K_POW:
		LOOP2(n, a, b, y, V(pow)(av, bv));
		break;
	case AG_K_MAXIMUM:
		LOOP2(n, a, b, y, F(v_max)(av, bv));
		break;
	case AG_K_MINIMUM:
		LOOP2(n, a, b, y, F(v_min)(av, bv));
		break;
	case AG_K_BINARY_COUNT:
		break;
	}
}

static void F(binary)(enum ag_k_binary op, int64_t n, const T *a, int64_t inca,
		      const T *b, int64_t incb, T *y, int64_t incy)
{
	_Alignas(64) T ba[CH];
	_Alignas(64) T bb[CH];
	_Alignas(64) T by[CH];
	struct F(src) sa, sb;
	struct F(dst) dy;
	int64_t i;

	if (n <= 0)
		return;
	if (inca == 1 && incb == 1 && incy == 1) {
		F(binary_c)(op, n, a, b, y);
		return;
	}
	F(src_init)(&sa, a, inca, ba, n);
	F(src_init)(&sb, b, incb, bb, n);
	F(dst_init)(&dy, y, incy, by, false);
	for (i = 0; i < n; i += CH) {
		int64_t len = CHLEN(i, n);

		F(binary_c)
		(op, len, F(src_get)(&sa, i, len), F(src_get)(&sb, i, len),
		 F(dst_get)(&dy, i));
		F(dst_put)(&dy, i, len);
	}
}

/*
 * Both gradients in one pass; each output is written only if asked for.
 * Everything is loaded before anything is stored, so ga or gb may alias g.
 */
#define LOOP2B(n, G, A, B, GA, GB, EA, EB)                      \
	do {                                                    \
		int64_t i_ = 0;                                 \
		for (; i_ + W <= (n); i_ += W) {                \
			VT gv = V(load)((G) + i_);              \
			VT av = V(load)((A) + i_);              \
			VT bv = V(load)((B) + i_);              \
			(void)av;                               \
			(void)bv;                               \
			if ((GA))                               \
				V(store)((GA) + i_, (EA));      \
			if ((GB))                               \
				V(store)((GB) + i_, (EB));      \
		}                                               \
		if (i_ < (n)) {                                 \
			int64_t r_ = (n)-i_;                    \
			VT gv = V(loadn)((G) + i_, r_);         \
			VT av = V(loadn)((A) + i_, r_);         \
			VT bv = V(loadn)((B) + i_, r_);         \
			(void)r_;                               \
			(void)av;                               \
			(void)bv;                               \
			if ((GA))                               \
				V(storen)((GA) + i_, (EA), r_); \
			if ((GB))                               \
				V(storen)((GB) + i_, (EB), r_); \
		}                                               \
	} while (0)

static inline VT F(v_half_if_eq)(VT gv, VT av, VT bv)
{
	return V(sel)(V(eq)(av, bv), V(mul)(gv, V(set1)(0.5)), gv);
}

static void F(binary_bwd_c)(enum ag_k_binary op, int64_t n, const T *g,
			    const T *a, const T *b, T *ga, T *gb)
{
	VT zero = V(set1)(0);
	VT one = V(set1)(1);

	switch (op) {
	case AG_K_ADD:
		LOOP2B(n, g, a, b, ga, gb, gv, gv);
		break;
	case AG_K_SUB:
		LOOP2B(n, g, a, b, ga, gb, gv, V(neg)(gv));
		break;
	case AG_K_MUL:
		LOOP2B(n, g, a, b, ga, gb, V(mul)(gv, bv), V(mul)(gv, av));
		break;
	case AG_K_DIV:
		/* torch: g / b and -g * ((a / b) / b) */
		LOOP2B(n, g, a, b, ga, gb, V(div)(gv, bv),
		       V(mul)(V(neg)(gv), V(div)(V(div)(av, bv), bv)));
		break;
	case AG_K_POW:
		/* torch: b == 0 ? 0 : g b a^(b-1);
		 * a == 0 && b >= 0 ? 0 : g a^b log(a) */
		LOOP2B(n, g, a, b, ga, gb,
		       V(sel)(V(eq)(bv, zero), zero,
			      V(mul)(gv,
				     V(mul)(bv, V(pow)(av, V(sub)(bv, one))))),
		       V(sel)(V(and)(V(eq)(av, zero), V(ge)(bv, zero)), zero,
			      V(mul)(gv, V(mul)(V(pow)(av, bv), V(log)(av)))));
		break;
	case AG_K_MAXIMUM:
		/* torch 1.13: ties split the gradient in halves */
		LOOP2B(n, g, a, b, ga, gb,
		       V(sel)(V(lt)(av, bv), zero, F(v_half_if_eq)(gv, av, bv)),
		       V(sel)(V(gt)(av, bv), zero,
			      F(v_half_if_eq)(gv, av, bv)));
		break;
	case AG_K_MINIMUM:
		LOOP2B(n, g, a, b, ga, gb,
		       V(sel)(V(gt)(av, bv), zero, F(v_half_if_eq)(gv, av, bv)),
		       V(sel)(V(lt)(av, bv), zero,
			      F(v_half_if_eq)(gv, av, bv)));
		break;
	case AG_K_BINARY_COUNT:
		break;
	}
}

static void F(binary_bwd)(enum ag_k_binary op, int64_t n, const T *g,
			  int64_t incg, const T *a, int64_t inca, const T *b,
			  int64_t incb, T *ga, int64_t incga, T *gb,
			  int64_t incgb)
{
	_Alignas(64) T bg[CH];
	_Alignas(64) T ba[CH];
	_Alignas(64) T bb[CH];
	_Alignas(64) T boa[CH];
	_Alignas(64) T bob[CH];
	struct F(src) sg, sa, sb;
	struct F(dst) dga, dgb;
	int64_t i;

	if (n <= 0 || (!ga && !gb))
		return;
	if (incg == 1 && inca == 1 && incb == 1 && (!ga || incga == 1) &&
	    (!gb || incgb == 1)) {
		F(binary_bwd_c)(op, n, g, a, b, ga, gb);
		return;
	}
	F(src_init)(&sg, g, incg, bg, n);
	F(src_init)(&sa, a, inca, ba, n);
	F(src_init)(&sb, b, incb, bb, n);
	F(dst_init)(&dga, ga, incga, boa, true);
	F(dst_init)(&dgb, gb, incgb, bob, true);
	for (i = 0; i < n; i += CH) {
		int64_t len = CHLEN(i, n);

		F(binary_bwd_c)
		(op, len, F(src_get)(&sg, i, len), F(src_get)(&sa, i, len),
		 F(src_get)(&sb, i, len), F(dst_get)(&dga, i),
		 F(dst_get)(&dgb, i));
		F(dst_put)(&dga, i, len);
		F(dst_put)(&dgb, i, len);
	}
	F(dst_done)(&dga);
	F(dst_done)(&dgb);
}
