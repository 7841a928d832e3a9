// SPDX-License-Identifier: MIT
/*
 * Products with a fixed right operand (a layer's weight) packed once.
 *
 * oneDNN's sgemm lays op(B) out in its kernels' blocked order at every
 * call, into a buffer of the calling thread: a 512 x 784 weight is 1.6 MB
 * written and read again per call.  With more request threads than cores
 * every thread's buffer is cold when it runs, and batch-32 requests at 64
 * threads served a third fewer per second than at 2 (docs/serving.md).
 * Here op(B) is reordered once into the layout oneDNN's matmul primitive
 * chose for it; every thread's product then reads that one copy.
 *
 * A primitive is made for each shape of A seen (rows, leading dimension,
 * transposed, beta zero or not), up to PACK_PRIMS of them, and published
 * for lookups that take no lock.  Packs and primitives are made under one
 * lock, create_lock: ThreadSanitizer cannot see how oneDNN's primitive
 * cache synchronises concurrent creations (they raced in tsan-serve), and
 * creation is rare.  pthread_atfork makes the lock fork-safe: fork waits
 * for a creation in progress.  Each
 * thread keeps its own stream and scratchpad (the primitives are made with
 * a user scratchpad, so one primitive runs on many threads at once).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "simd.h"

static atomic_long packs_live;

long ag_k_gemm_packs_live(void)
{
	return atomic_load_explicit(&packs_live, memory_order_relaxed);
}

#ifdef AG_K_GEMM_ONEDNN
#include "onednn.h"

/* Products split over the pool have a few distinct row counts; a caller
 * with more shapes than this gets the unpacked product for the rest. */
#define PACK_PRIMS 16

struct pack_prim {
	int64_t m, lda;
	bool ta, beta;
	dnnl_primitive_t prim; /* NULL: oneDNN declined this shape */
	size_t scratch;
};

struct ag_k_gemm_pack {
	const struct ag_k_mem *mem;
	void *w_buf; /* w's memory, from mem */
	int64_t k, n;
	bool tb; /* b, ldb: op(B) as given, for products not packed */
	const float *b;
	int64_t ldb;
	dnnl_memory_t w; /* op(B) in the primitives' layout */
	dnnl_memory_desc_t w_md;
	atomic_int nprims; /* published entries of prims */
	struct pack_prim prims[PACK_PRIMS];
};

static dnnl_engine_t engine;
static pthread_once_t engine_once = PTHREAD_ONCE_INIT;
static pthread_key_t tls_key;
static pthread_mutex_t create_lock = PTHREAD_MUTEX_INITIALIZER;

static void create_lock_take(void)
{
	pthread_mutex_lock(&create_lock);
}

static void create_lock_drop(void)
{
	pthread_mutex_unlock(&create_lock);
}

/* A thread's stream and scratchpad, freed when the thread exits. */
struct pack_tls {
	const struct ag_k_mem *mem;
	dnnl_stream_t stream;
	void *scratch;
	size_t cap;
};

static void tls_free(void *arg)
{
	struct pack_tls *t = arg;

	if (t->stream)
		dnnl_stream_destroy(t->stream);
	t->mem->free(t->scratch);
	t->mem->free(t);
}

static void engine_init(void)
{
	if (dnnl_engine_create(&engine, dnnl_cpu, 0) != dnnl_success) {
		engine = NULL;
	} else if (pthread_key_create(&tls_key, tls_free) ||
		   pthread_atfork(create_lock_take, create_lock_drop,
				  create_lock_drop)) {
		dnnl_engine_destroy(engine);
		engine = NULL;
	}
}

static struct pack_tls *tls_get(const struct ag_k_mem *mem, size_t scratch)
{
	struct pack_tls *t = pthread_getspecific(tls_key);

	if (!t) {
		t = mem->aligned_alloc(_Alignof(struct pack_tls), sizeof(*t));
		if (!t)
			return NULL;
		*t = (struct pack_tls){ .mem = mem };
		if (dnnl_stream_create(&t->stream, engine,
				       dnnl_stream_default_flags) !=
			    dnnl_success ||
		    pthread_setspecific(tls_key, t)) {
			tls_free(t);
			return NULL;
		}
	}
	if (scratch > t->cap) {
		size_t cap = (scratch + 4095) & ~(size_t)4095;
		void *p = cap >= scratch ? t->mem->aligned_alloc(64, cap) :
					   NULL;

		if (!p)
			return NULL;
		t->mem->free(t->scratch);
		t->scratch = p;
		t->cap = cap;
	}
	return t;
}

/* A [rows, cols] f32 matrix, transposed or not, with leading dim ld. */
static dnnl_status_t mat_md(dnnl_memory_desc_t *md, int64_t rows, int64_t cols,
			    bool trans, int64_t ld)
{
	dnnl_dims_t dims = { rows, cols };
	dnnl_dims_t strides = { trans ? 1 : ld, trans ? ld : 1 };

	return dnnl_memory_desc_init_by_strides(md, 2, dims, dnnl_f32, strides);
}

/*
 * The primitive for C[m, n] = op(A) B + beta C with B in w_md (NULL: any
 * layout, which the first primitive chooses).  NULL when oneDNN declines.
 */
static dnnl_primitive_desc_t prim_desc(struct ag_k_gemm_pack *p,
				       const dnnl_memory_desc_t *w_md,
				       int64_t m, bool ta, int64_t lda,
				       bool beta)
{
	dnnl_memory_desc_t a_md, c_md, any_md;
	dnnl_primitive_attr_t attr = NULL;
	dnnl_post_ops_t po = NULL;
	dnnl_primitive_desc_t pd = NULL;
	dnnl_matmul_desc_t mm;
	dnnl_dims_t wd = { p->k, p->n };

	if (mat_md(&a_md, m, p->k, ta, lda) ||
	    mat_md(&c_md, m, p->n, false, p->n))
		return NULL;
	if (!w_md) {
		if (dnnl_memory_desc_init_by_tag(&any_md, 2, wd, dnnl_f32,
						 dnnl_format_tag_any))
			return NULL;
		w_md = &any_md;
	}
	if (dnnl_matmul_desc_init(&mm, &a_md, w_md, NULL, &c_md) ||
	    dnnl_primitive_attr_create(&attr))
		return NULL;
	if (dnnl_primitive_attr_set_scratchpad_mode(attr,
						    dnnl_scratchpad_mode_user))
		goto out;
	if (beta) {
		if (dnnl_post_ops_create(&po) ||
		    dnnl_post_ops_append_sum(po, 1.0f) ||
		    dnnl_primitive_attr_set_post_ops(attr, po))
			goto out;
	}
	if (dnnl_primitive_desc_create(&pd, &mm, attr, engine, NULL))
		pd = NULL;
out:
	if (po)
		dnnl_post_ops_destroy(po);
	dnnl_primitive_attr_destroy(attr);
	return pd;
}

static size_t pd_scratch(dnnl_primitive_desc_t pd)
{
	const dnnl_memory_desc_t *md =
		dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);

	return md ? dnnl_memory_desc_get_size(md) : 0;
}

static bool reorder(const dnnl_memory_desc_t *from_md, const void *from,
		    dnnl_memory_t to)
{
	dnnl_primitive_desc_t rpd = NULL;
	dnnl_primitive_t r = NULL;
	dnnl_memory_t src = NULL;
	dnnl_stream_t s = NULL;
	const dnnl_memory_desc_t *to_md;
	dnnl_exec_arg_t args[2];
	bool ok = false;
	int prev;

	if (dnnl_memory_get_memory_desc(to, &to_md) ||
	    dnnl_memory_create(&src, from_md, engine, (void *)from) ||
	    dnnl_reorder_primitive_desc_create(&rpd, from_md, engine, to_md,
					       engine, NULL) ||
	    dnnl_primitive_create(&r, rpd) ||
	    dnnl_stream_create(&s, engine, dnnl_stream_default_flags))
		goto out;
	args[0] = (dnnl_exec_arg_t){ DNNL_ARG_FROM, src };
	args[1] = (dnnl_exec_arg_t){ DNNL_ARG_TO, to };
	prev = ag_k_omp_one_begin();
	ok = !dnnl_primitive_execute(r, s, 2, args) && !dnnl_stream_wait(s);
	ag_k_omp_one_end(prev);
out:
	if (s)
		dnnl_stream_destroy(s);
	if (r)
		dnnl_primitive_destroy(r);
	if (rpd)
		dnnl_primitive_desc_destroy(rpd);
	if (src)
		dnnl_memory_destroy(src);
	return ok;
}

/* The rows the layout is chosen for: a request batch of a service. */
#define PACK_REF_ROWS 32

int ag_k_gemm_pack_f32(const struct ag_k_mem *mem, bool tb, int64_t k,
		       int64_t n, const float *b, int64_t ldb,
		       struct ag_k_gemm_pack **out)
{
	struct ag_k_gemm_pack *p;
	dnnl_primitive_desc_t pd;
	dnnl_memory_desc_t b_md;
	int rc = 1;

	*out = NULL;
	if (strcmp(ag_k_gemm_f32_name(), "onednn") != 0 || k <= 0 || n <= 0)
		return 1;
	pthread_once(&engine_once, engine_init);
	if (!engine || ldb < (tb ? k : n) || mat_md(&b_md, k, n, tb, ldb))
		return 1;
	p = mem->aligned_alloc(_Alignof(struct ag_k_gemm_pack), sizeof(*p));
	if (!p)
		return -1;
	*p = (struct ag_k_gemm_pack){
		.mem = mem, .k = k, .n = n, .tb = tb, .b = b, .ldb = ldb
	};
	pthread_mutex_lock(&create_lock);
	pd = prim_desc(p, NULL, PACK_REF_ROWS, false, k, false);
	if (!pd)
		goto fail;
	p->w_md = *dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
	dnnl_primitive_desc_destroy(pd);
	p->w_buf = mem->aligned_alloc(64, dnnl_memory_desc_get_size(&p->w_md));
	if (!p->w_buf) {
		rc = -1;
		goto fail;
	}
	if (dnnl_memory_create(&p->w, &p->w_md, engine, p->w_buf))
		goto fail_buf;
	if (!reorder(&b_md, b, p->w))
		goto fail_mem;
	pthread_mutex_unlock(&create_lock);
	atomic_fetch_add_explicit(&packs_live, 1, memory_order_relaxed);
	*out = p;
	return 0;
fail_mem:
	dnnl_memory_destroy(p->w);
fail_buf:
	mem->free(p->w_buf);
fail:
	pthread_mutex_unlock(&create_lock);
	mem->free(p);
	return rc;
}

void ag_k_gemm_pack_free(struct ag_k_gemm_pack *p)
{
	int n;

	if (!p)
		return;
	n = atomic_load_explicit(&p->nprims, memory_order_acquire);
	pthread_mutex_lock(&create_lock); /* oneDNN's cache, as at creation */
	for (int i = 0; i < n; i++)
		if (p->prims[i].prim)
			dnnl_primitive_destroy(p->prims[i].prim);
	dnnl_memory_destroy(p->w);
	pthread_mutex_unlock(&create_lock);
	p->mem->free(p->w_buf);
	p->mem->free(p);
	atomic_fetch_sub_explicit(&packs_live, 1, memory_order_relaxed);
}

static const struct pack_prim *prim_find(struct ag_k_gemm_pack *p, int n,
					 int64_t m, bool ta, int64_t lda,
					 bool beta)
{
	for (int i = 0; i < n; i++) {
		const struct pack_prim *e = &p->prims[i];

		if (e->m == m && e->ta == ta && e->lda == lda &&
		    e->beta == beta)
			return e;
	}
	return NULL;
}

/* The entry for this shape, made if new; NULL when the table is full. */
static const struct pack_prim *prim_get(struct ag_k_gemm_pack *p, int64_t m,
					bool ta, int64_t lda, bool beta)
{
	int n = atomic_load_explicit(&p->nprims, memory_order_acquire);
	const struct pack_prim *e = prim_find(p, n, m, ta, lda, beta);
	dnnl_primitive_desc_t pd;

	if (e || n == PACK_PRIMS)
		return e;
	pthread_mutex_lock(&create_lock);
	n = atomic_load_explicit(&p->nprims, memory_order_relaxed);
	e = prim_find(p, n, m, ta, lda, beta);
	if (!e && n < PACK_PRIMS) {
		struct pack_prim *ne = &p->prims[n];

		*ne = (struct pack_prim){
			.m = m, .lda = lda, .ta = ta, .beta = beta
		};
		pd = prim_desc(p, &p->w_md, m, ta, lda, beta);
		if (pd) {
			ne->scratch = pd_scratch(pd);
			if (dnnl_primitive_create(&ne->prim, pd))
				ne->prim = NULL;
			dnnl_primitive_desc_destroy(pd);
		}
		/* a shape oneDNN declined is kept too, so it is not retried */
		atomic_store_explicit(&p->nprims, n + 1, memory_order_release);
		e = ne;
	}
	pthread_mutex_unlock(&create_lock);
	return e;
}

static bool packed_try(struct ag_k_gemm_pack *p, bool ta, int64_t m,
		       const float *a, int64_t lda, float beta, float *c)
{
	const struct pack_prim *e;
	dnnl_memory_desc_t a_md, c_md, s_md;
	dnnl_memory_t am = NULL, cm = NULL, sm = NULL;
	struct pack_tls *t;
	dnnl_exec_arg_t args[4];
	bool ok = false;
	int nargs = 3, prev;

	if (beta != 0 && beta != 1) /* the post-op sum adds C once */
		return false;
	e = prim_get(p, m, ta, lda, beta != 0);
	if (!e || !e->prim)
		return false;
	t = tls_get(p->mem, e->scratch);
	if (!t || mat_md(&a_md, m, p->k, ta, lda) ||
	    mat_md(&c_md, m, p->n, false, p->n))
		return false;
	if (dnnl_memory_create(&am, &a_md, engine, (void *)a) ||
	    dnnl_memory_create(&cm, &c_md, engine, c))
		goto out;
	args[0] = (dnnl_exec_arg_t){ DNNL_ARG_SRC, am };
	args[1] = (dnnl_exec_arg_t){ DNNL_ARG_WEIGHTS, p->w };
	args[2] = (dnnl_exec_arg_t){ DNNL_ARG_DST, cm };
	if (e->scratch) {
		dnnl_dims_t sd = { (int64_t)e->scratch };

		if (dnnl_memory_desc_init_by_tag(&s_md, 1, sd, dnnl_u8,
						 dnnl_a) ||
		    dnnl_memory_create(&sm, &s_md, engine, t->scratch))
			goto out;
		args[3] = (dnnl_exec_arg_t){ DNNL_ARG_SCRATCHPAD, sm };
		nargs = 4;
	}
	prev = ag_k_omp_one_begin();
	ok = !dnnl_primitive_execute(e->prim, t->stream, nargs, args);
	ag_k_omp_one_end(prev);
out:
	if (sm)
		dnnl_memory_destroy(sm);
	if (cm)
		dnnl_memory_destroy(cm);
	if (am)
		dnnl_memory_destroy(am);
	return ok;
}

/* A shape oneDNN declined, or one past the table, is multiplied from
 * the weight as given, as ag_k_gemm_serial would. */
static void packed_one(struct ag_k_gemm_pack *p, bool ta, int64_t m,
		       const float *a, int64_t lda, float beta, float *c)
{
	if (!packed_try(p, ta, m, a, lda, beta, c))
		ag_k_gemm_serial_f32(ta, p->tb, m, p->n, p->k, 1.0f, a, lda,
				     p->b, p->ldb, beta, c, p->n);
}

struct packed_args {
	struct ag_k_gemm_pack *p;
	bool ta;
	const float *a;
	int64_t lda;
	float beta;
	float *c;
};

static void packed_part(int64_t s, int64_t e, void *arg)
{
	struct packed_args *g = arg;

	packed_one(g->p, g->ta, e - s, g->a + (g->ta ? s : s * g->lda), g->lda,
		   g->beta, g->c + s * g->p->n);
}

void ag_k_gemm_packed_f32(struct ag_k_gemm_pack *p, bool ta, int64_t m,
			  const float *a, int64_t lda, float beta, float *c)
{
	ag_k_parallel_for_fn pf = ag_k_get_parallel_for();
	int64_t grain = pf ? ag_k_gemm_grain(m, p->n * p->k) : 0;

	if (m <= 0)
		return;
	if (grain) {
		struct packed_args g = {
			.p = p,
			.ta = ta,
			.a = a,
			.lda = lda,
			.beta = beta,
			.c = c,
		};

		pf(m, grain, packed_part, &g);
		return;
	}
	packed_one(p, ta, m, a, lda, beta, c);
}

#else /* no oneDNN: nothing is packed, every product runs unpacked */

int ag_k_gemm_pack_f32(const struct ag_k_mem *mem, bool tb, int64_t k,
		       int64_t n, const float *b, int64_t ldb,
		       struct ag_k_gemm_pack **out)
{
	(void)mem, (void)tb, (void)k, (void)n, (void)b, (void)ldb;
	*out = NULL;
	return 1;
}

void ag_k_gemm_pack_free(struct ag_k_gemm_pack *p)
{
	(void)p;
}

/* never called: no pack is ever made */
void ag_k_gemm_packed_f32(struct ag_k_gemm_pack *p, bool ta, int64_t m,
			  const float *a, int64_t lda, float beta, float *c)
{
	(void)p, (void)ta, (void)m, (void)a, (void)lda, (void)beta, (void)c;
}
#endif
