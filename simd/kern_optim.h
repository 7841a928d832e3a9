/* SPDX-License-Identifier: MIT */
/*
 * The optimisers' fused updates, torch 1.13's single-tensor SGD and
 * Adam/AdamW, over the vector layer.  kernels.c includes this file twice
 * after kern_ops.h (whose pragma keeps clang from fusing a multiply-add),
 * with T, V, W and F as for kern_tmpl.h.  Every operation is torch's, in
 * its order, in the data type: add(p, alpha=wd) is d + wd p, mul_ then
 * add_ is (buf m) + (1 - damp) d, lerp with weight < 0.5 is a + w (b - a),
 * addcmul is a + (v g) g, addcdiv is p + (v e) / den.  The constants come
 * in f64 from the caller and are rounded to T once, as torch's scalars.
 * No include guard on purpose.
 */

/* a whole vector, or the last k < W elements */
#define OLD(p) (full ? V(load)(p) : V(loadn)(p, k))
#define OST(p, v)                           \
	do {                                \
		if (full)                   \
			V(store)(p, v);     \
		else                        \
			V(storen)(p, v, k); \
	} while (0)

/* the options as constants, so each loop keeps only its own operations */
static inline __attribute__((always_inline)) void
F(sgd_vec)(T *p, const T *g, T *buf, int64_t k, bool full,
	   const struct ag_k_sgd *a, bool has_wd, int mode, bool nesterov)
{
	const V(t) wd = V(set1)((T)a->wd), mom = V(set1)((T)a->momentum);
	const V(t) damp1 = V(set1)((T)a->damp1), nlr = V(set1)((T)a->nlr);
	V(t) d = OLD(g), pv = OLD(p);

	(void)k; /* the generic loadn ignores it */
	if (has_wd)
		d = V(add)(d, V(mul)(wd, pv));
	if (mode) {
		V(t)
		b = mode == 1 ? d :
				V(add)(V(mul)(OLD(buf), mom), V(mul)(damp1, d));

		OST(buf, b);
		d = nesterov ? V(add)(d, V(mul)(mom, b)) : b;
	}
	OST(p, V(add)(pv, V(mul)(nlr, d)));
}

static inline __attribute__((always_inline)) void
F(sgd_loop)(int64_t n, T *p, const T *g, T *buf, const struct ag_k_sgd *a,
	    bool has_wd, int mode, bool nesterov)
{
	int64_t i = 0;

	/* braces: clang-format takes F(x)(...) for a declaration */
	for (; i + W <= n; i += W) {
		F(sgd_vec)
		(p + i, g + i, buf ? buf + i : NULL, W, true, a, has_wd, mode,
		 nesterov);
	}
	if (i < n) {
		F(sgd_vec)
		(p + i, g + i, buf ? buf + i : NULL, n - i, false, a, has_wd,
		 mode, nesterov);
	}
}

static void F(sgd)(int64_t n, T *p, const T *g, T *buf,
		   const struct ag_k_sgd *a)
{
	int mode = !buf ? 0 : a->first ? 1 : 2;
	bool wd = a->wd != 0;

	/* one loop per choice */
	if (mode == 0 && wd)
		F(sgd_loop)(n, p, g, buf, a, true, 0, false);
	else if (mode == 0)
		F(sgd_loop)(n, p, g, buf, a, false, 0, false);
	else if (mode == 1 && a->nesterov)
		F(sgd_loop)(n, p, g, buf, a, wd, 1, true);
	else if (mode == 1)
		F(sgd_loop)(n, p, g, buf, a, wd, 1, false);
	else if (a->nesterov)
		F(sgd_loop)(n, p, g, buf, a, wd, 2, true);
	else
		F(sgd_loop)(n, p, g, buf, a, wd, 2, false);
}

/* wdm: 0 no weight decay, 1 L2 (Adam), 2 decoupled (AdamW) */
static inline __attribute__((always_inline)) void
F(adam_vec)(T *p, const T *g, T *m, T *v, T *vmax, int64_t k, bool full,
	    const struct ag_k_adam *a, int wdm, bool lerp_hi, bool ams)
{
	const T w_ = (T)a->w;
	const V(t) w = V(set1)(w_), w1 = V(set1)(1 - w_);
	const V(t) b2 = V(set1)((T)a->beta2), c2 = V(set1)((T)a->c2);
	const V(t) eps = V(set1)((T)a->eps), wd = V(set1)((T)a->wd);
	const V(t) decay = V(set1)((T)a->decay), nss = V(set1)((T)a->nss);
	const V(t) bc2s = V(set1)((T)a->bc2s);
	V(t) gi = OLD(g), pv = OLD(p), mv = OLD(m), vv = OLD(v), den;

	(void)k;
	if (wdm == 2)
		pv = V(mul)(pv, decay);
	else if (wdm == 1)
		gi = V(add)(gi, V(mul)(wd, pv));
	mv = lerp_hi ? V(add)(mv, V(mul)(w, V(sub)(gi, mv))) :
		       V(sub)(gi, V(mul)(V(sub)(gi, mv), w1));
	OST(m, mv);
	vv = V(add)(V(mul)(vv, b2), V(mul)(V(mul)(c2, gi), gi));
	OST(v, vv);
	if (ams) {
		V(t) mx = OLD(vmax);

		/* the larger, NaN in vmax kept (torch's maximum) */
		mx = V(sel)(V(or)(V(gt)(mx, vv), V(isnan)(mx)), mx, vv);
		OST(vmax, mx);
		den = V(add)(V(div)(V(sqrt)(mx), bc2s), eps);
	} else {
		den = V(add)(V(div)(V(sqrt)(vv), bc2s), eps);
	}
	OST(p, V(add)(pv, V(div)(V(mul)(nss, mv), den)));
}

static inline __attribute__((always_inline)) void
F(adam_loop)(int64_t n, T *p, const T *g, T *m, T *v, T *vmax,
	     const struct ag_k_adam *a, int wdm, bool lerp_hi, bool ams)
{
	int64_t i = 0;

	for (; i + W <= n; i += W) {
		F(adam_vec)
		(p + i, g + i, m + i, v + i, ams ? vmax + i : NULL, W, true, a,
		 wdm, lerp_hi, ams);
	}
	if (i < n) {
		F(adam_vec)
		(p + i, g + i, m + i, v + i, ams ? vmax + i : NULL, n - i,
		 false, a, wdm, lerp_hi, ams);
	}
}

#define ADAM_CASE(WDM, HI, AMS)                                     \
	case (WDM)*4 + (HI)*2 + (AMS):                              \
		F(adam_loop)(n, p, g, m, v, vmax, a, WDM, HI, AMS); \
		break;

static void F(adam)(int64_t n, T *p, const T *g, T *m, T *v, T *vmax,
		    const struct ag_k_adam *a)
{
	int wdm = a->decoupled ? 2 : a->wd != 0 ? 1 : 0;

	/* one loop per choice */
	switch (wdm * 4 + a->lerp_hi * 2 + !!vmax) {
		ADAM_CASE(0, 0, 0)
		ADAM_CASE(0, 0, 1)
		ADAM_CASE(0, 1, 0)
		ADAM_CASE(0, 1, 1)
		ADAM_CASE(1, 0, 0)
		ADAM_CASE(1, 0, 1)
		ADAM_CASE(1, 1, 0)
		ADAM_CASE(1, 1, 1)
		ADAM_CASE(2, 0, 0)
		ADAM_CASE(2, 0, 1)
		ADAM_CASE(2, 1, 0)
		ADAM_CASE(2, 1, 1)
	}
}

#undef ADAM_CASE
#undef OLD
#undef OST
