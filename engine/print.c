// SPDX-License-Identifier: MIT
/*
 * ag_tensor_print: the layout of PyTorch's repr(tensor) (torch 1.13,
 * torch/_tensor_str.py with the default print options), reimplemented.
 *
 * The rules, as torch applies them:
 *
 *  - One formatter per tensor gives every element the same column width.
 *    For i64 the width is that of the longest value.  For floats only the
 *    nonzero finite values count: if all are integral ("int mode") they are
 *    printed as "3."; if the largest magnitude is over 1e8, the ratio of the
 *    largest to the smallest is over 1000, or (not in int mode) the
 *    smallest is under 1e-4, they are printed as "%.4e" ("sci mode");
 *    otherwise as "%.4f".  nan, inf and zeros do not widen the column.
 *  - Over 1000 elements, each dim longer than 6 shows its first and last 3
 *    entries around a "..." entry, and the formatter only sees the shown
 *    elements.
 *  - A row is wrapped so that a line holds floor((80 - indent) / (width +
 *    2)) entries, "..." counting as one; nested dims are separated by
 *    ndim - 1 newlines and indented to line up under the opening bracket.
 *  - Suffixes (size for empty non-1-D tensors, dtype when not the default,
 *    grad_fn or requires_grad) go on the last line when it stays within 80
 *    columns, else on a new line indented under "tensor(".
 *
 * f32 and i64 are the default dtypes (no suffix, like float32 and int64);
 * f64 prints ", dtype=f64", and an empty tensor always names a dtype other
 * than f32.  grad_fn is printed with our node names (TanhBackward where
 * torch says TanhBackward0).
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <ag/autograd.h>

#include "internal.h"

enum {
	PRINT_PRECISION = 4,
	PRINT_THRESHOLD = 1000,
	PRINT_EDGEITEMS = 3,
	PRINT_LINEWIDTH = 80,
};

static const char print_prefix[] = "tensor(";
#define PRINT_INDENT ((int)sizeof(print_prefix) - 1)

/* A growing output buffer; on allocation failure it sets oom and stops. */
struct pbuf {
	char *s;
	size_t len;
	size_t cap;
	bool oom;
};

static void pb_put(struct pbuf *b, const char *s, size_t n)
{
	if (b->oom)
		return;
	if (b->len + n + 1 > b->cap &&
	    ag__array_grow((void **)&b->s, &b->cap, b->len + n + 1, 1)) {
		b->oom = true;
		return;
	}
	memcpy(b->s + b->len, s, n);
	b->len += n;
	b->s[b->len] = '\0';
}

static void pb_puts(struct pbuf *b, const char *s)
{
	pb_put(b, s, strlen(s));
}

static void pb_spaces(struct pbuf *b, int n)
{
	static const char sp[] = "                                ";

	while (n > 0) {
		int k = n < (int)sizeof(sp) - 1 ? n : (int)sizeof(sp) - 1;

		pb_put(b, sp, (size_t)k);
		n -= k;
	}
}

static void pb_repeat(struct pbuf *b, char c, int n)
{
	for (int i = 0; i < n; i++)
		pb_put(b, &c, 1);
}

/* Length of the last line of b, counting from its last newline. */
static size_t pb_last_line(const struct pbuf *b)
{
	size_t i = b->len;

	while (i > 0 && b->s[i - 1] != '\n')
		i--;
	return b->len - i;
}

struct formatter {
	bool int_mode;
	bool sci_mode;
	int width;
};

struct printer {
	const struct ag_tensor *t;
	bool summarize;
	struct formatter fmt;
	struct pbuf out;
};

/* Room for any element: "%.0f" of DBL_MAX is 309 digits. */
#define ELEM_BUF 400

static double elem_f(const struct ag_tensor *t, int64_t off)
{
	const void *p = t->storage->data;

	if (t->dtype == AG_F32)
		return ((const float *)p)[off];
	return ((const double *)p)[off];
}

static int64_t elem_i(const struct ag_tensor *t, int64_t off)
{
	return ((const int64_t *)t->storage->data)[off];
}

/* An element of a float tensor without padding, as Python formats it. */
static int format_float(const struct formatter *f, double v, char *buf)
{
	int n;

	if (isnan(v))
		return snprintf(buf, ELEM_BUF, "nan"); /* never "-nan" */
	if (isinf(v))
		return snprintf(buf, ELEM_BUF, "%s", v > 0 ? "inf" : "-inf");
	if (f->sci_mode)
		return snprintf(buf, ELEM_BUF, "%.*e", PRINT_PRECISION, v);
	if (!f->int_mode)
		return snprintf(buf, ELEM_BUF, "%.*f", PRINT_PRECISION, v);
	n = snprintf(buf, ELEM_BUF - 1, "%.0f", v);
	if (n < 0 || n >= ELEM_BUF - 1)
		return n;
	buf[n++] = '.';
	buf[n] = '\0';
	return n;
}

/* Element at storage offset off, formatted and right-aligned. */
static void put_elem(struct printer *p, int64_t off)
{
	char buf[ELEM_BUF];
	int n;

	if (p->t->dtype == AG_I64)
		n = snprintf(buf, sizeof(buf), "%" PRId64, elem_i(p->t, off));
	else
		n = format_float(&p->fmt, elem_f(p->t, off), buf);
	if (n < 0 || n >= ELEM_BUF)
		n = (int)strlen(buf);
	pb_spaces(&p->out, p->fmt.width - n);
	pb_put(&p->out, buf, (size_t)n);
}

static bool elided(const struct printer *p, int64_t size)
{
	return p->summarize && size > 2 * PRINT_EDGEITEMS;
}

/*
 * Calls fn on the storage offset of every element that will be shown, in
 * row-major order: all of them, or the edge items of each dim when
 * summarising.
 */
static void visit(const struct printer *p, int d, int64_t off,
		  void (*fn)(void *ctx, const struct ag_tensor *t, int64_t off),
		  void *ctx)
{
	const struct ag_tensor *t = p->t;
	int64_t n;

	if (d == t->ndim) {
		fn(ctx, t, off);
		return;
	}
	n = t->shape[d];
	for (int64_t i = 0; i < n; i++) {
		if (elided(p, n) && i == PRINT_EDGEITEMS)
			i = n - PRINT_EDGEITEMS;
		visit(p, d + 1, off + i * t->strides[d], fn, ctx);
	}
}

struct scan {
	struct formatter *f;
	bool any; /* a nonzero finite value was seen */
	double min; /* of the magnitudes of the nonzero finite values */
	double max;
};

static void scan_range(void *ctx, const struct ag_tensor *t, int64_t off)
{
	struct scan *s = ctx;
	double v = elem_f(t, off);
	double a = fabs(v);

	if (!isfinite(v) || v == 0)
		return;
	if (!s->any || a < s->min)
		s->min = a;
	if (!s->any || a > s->max)
		s->max = a;
	s->any = true;
	if (v != ceil(v))
		s->f->int_mode = false;
}

static void scan_width(void *ctx, const struct ag_tensor *t, int64_t off)
{
	struct scan *s = ctx;
	char buf[ELEM_BUF];
	int n;

	if (t->dtype == AG_I64) {
		n = snprintf(buf, sizeof(buf), "%" PRId64, elem_i(t, off));
	} else {
		double v = elem_f(t, off);

		if (!isfinite(v) || v == 0)
			return;
		n = format_float(s->f, v, buf);
	}
	if (n > s->f->width)
		s->f->width = n;
}

/* torch's _Formatter over the elements that will be shown. */
static void formatter_init(struct printer *p)
{
	struct formatter *f = &p->fmt;
	struct scan s = { .f = f };

	f->int_mode = true;
	f->sci_mode = false;
	f->width = 1;
	if (p->t->dtype != AG_I64) {
		visit(p, 0, p->t->offset, scan_range, &s);
		if (!s.any)
			return;
		f->sci_mode = s.max / s.min > 1000.0 || s.max > 1.0e8 ||
			      (!f->int_mode && s.min < 1.0e-4);
	}
	/* int mode: "%.0f" plus the '.', which format_float appends */
	visit(p, 0, p->t->offset, scan_width, &s);
}

/* Separator before entry k of a row that holds per_line entries a line. */
static void row_sep(struct printer *p, int64_t k, int per_line, int indent)
{
	if (k == 0)
		return;
	if (k % per_line == 0) {
		pb_puts(&p->out, ",\n");
		pb_spaces(&p->out, indent + 1);
	} else {
		pb_puts(&p->out, ", ");
	}
}

static void put_row(struct printer *p, int64_t off, int indent)
{
	const struct ag_tensor *t = p->t;
	int d = t->ndim - 1;
	int64_t n = t->shape[d];
	int per_line = (PRINT_LINEWIDTH - indent) / (p->fmt.width + 2);
	int64_t k = 0;

	if (per_line < 1)
		per_line = 1;
	pb_puts(&p->out, "[");
	for (int64_t i = 0; i < n; i++) {
		if (elided(p, n) && i == PRINT_EDGEITEMS) {
			row_sep(p, k++, per_line, indent);
			pb_puts(&p->out, " ...");
			i = n - PRINT_EDGEITEMS;
		}
		row_sep(p, k++, per_line, indent);
		put_elem(p, off + i * t->strides[d]);
	}
	pb_puts(&p->out, "]");
}

/* Separator between the slices of a dim with `left` dims below and at it. */
static void slice_sep(struct printer *p, int left, int indent)
{
	pb_puts(&p->out, ",");
	pb_repeat(&p->out, '\n', left - 1);
	pb_spaces(&p->out, indent + 1);
}

static void put_dims(struct printer *p, int d, int64_t off, int indent)
{
	const struct ag_tensor *t = p->t;
	int left = t->ndim - d;
	int64_t n;

	if (left == 0) {
		put_elem(p, off);
		return;
	}
	if (left == 1) {
		put_row(p, off, indent);
		return;
	}
	n = t->shape[d];
	pb_puts(&p->out, "[");
	for (int64_t i = 0; i < n; i++) {
		if (i > 0)
			slice_sep(p, left, indent);
		if (elided(p, n) && i == PRINT_EDGEITEMS) {
			pb_puts(&p->out, "...");
			slice_sep(p, left, indent);
			i = n - PRINT_EDGEITEMS;
		}
		put_dims(p, d + 1, off + i * t->strides[d], indent + 1);
	}
	pb_puts(&p->out, "]");
}

/*
 * torch's _add_suffixes.  Its running line length starts at the last
 * line's length plus 2 and, after a break, restarts at indent plus the
 * suffix; the quirk is kept so the breaks fall where torch puts them.
 */
static void put_suffixes(struct printer *p, const char *const *suf, int n)
{
	size_t line = pb_last_line(&p->out) + 2;

	for (int i = 0; i < n; i++) {
		size_t len = strlen(suf[i]);

		if (line + len + 2 > PRINT_LINEWIDTH) {
			pb_puts(&p->out, ",\n");
			pb_spaces(&p->out, PRINT_INDENT);
			line = PRINT_INDENT + len;
		} else {
			pb_puts(&p->out, ", ");
			line += len + 2;
		}
		pb_puts(&p->out, suf[i]);
	}
	pb_puts(&p->out, ")\n");
}

int ag_tensor_print(const struct ag_tensor *t, FILE *f)
{
	struct printer p = { .t = t };
	char size_buf[32 + AG_MAX_DIMS * 24];
	char dtype_buf[32];
	char grad_buf[128];
	const char *suf[3];
	int nsuf = 0;
	int ret = 0;

	if (!t)
		return ag__err_null("ag_tensor_print", "t");
	if (!f)
		return ag__err(AG_EINVAL,
			       "ag_tensor_print: argument 'f' is NULL");

	pb_puts(&p.out, print_prefix);
	if (t->numel == 0) {
		/* like NumPy: the shape unless 1-D, the dtype unless f32 */
		if (t->ndim != 1) {
			size_t n = (size_t)snprintf(size_buf, sizeof(size_buf),
						    "size=(");

			for (int d = 0; d < t->ndim; d++)
				n += (size_t)snprintf(size_buf + n,
						      sizeof(size_buf) - n,
						      "%s%" PRId64,
						      d ? ", " : "",
						      t->shape[d]);
			snprintf(size_buf + n, sizeof(size_buf) - n, ")");
			suf[nsuf++] = size_buf;
		}
		if (t->dtype != AG_F32) {
			snprintf(dtype_buf, sizeof(dtype_buf), "dtype=%s",
				 ag_dtype_name(t->dtype));
			suf[nsuf++] = dtype_buf;
		}
		pb_puts(&p.out, "[]");
	} else {
		if (t->dtype != AG_F32 && t->dtype != AG_I64) {
			snprintf(dtype_buf, sizeof(dtype_buf), "dtype=%s",
				 ag_dtype_name(t->dtype));
			suf[nsuf++] = dtype_buf;
		}
		p.summarize = t->numel > PRINT_THRESHOLD;
		formatter_init(&p);
		put_dims(&p, 0, t->offset, PRINT_INDENT);
	}
	if (t->meta && t->meta->grad_fn) {
		snprintf(grad_buf, sizeof(grad_buf), "grad_fn=<%s>",
			 ag_node_name(t->meta->grad_fn));
		suf[nsuf++] = grad_buf;
	} else if (ag__requires_grad(t)) {
		suf[nsuf++] = "requires_grad=True";
	}
	put_suffixes(&p, suf, nsuf);

	if (p.out.oom) {
		ret = -AG_ENOMEM;
	} else {
		errno = 0;
		if (fwrite(p.out.s, 1, p.out.len, f) != p.out.len)
			ret = ag__err(AG_EIO,
				      "ag_tensor_print: writing failed: %s",
				      strerror(errno ? errno : EIO));
	}
	ag__free(p.out.s);
	return ret;
}
