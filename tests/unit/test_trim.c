// SPDX-License-Identifier: MIT
/*
 * ag_trim(): the allocator's caches (engine/alloc.c) go back to the system
 * on demand, and each cache keeps its bound.  Read through the allocator's
 * own counters (ag__alloc_stats).  Under AddressSanitizer the caches are
 * bypassed, so there is nothing to trim and the tests only check that.
 */
#include <pthread.h>
#include <string.h>

#include <ag/memory.h>
#include <ag/pool.h>

#include "common.h"
#include "alloc.h"

#if defined(__SANITIZE_ADDRESS__)
#define PASSTHROUGH 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PASSTHROUGH 1
#endif
#endif
#ifndef PASSTHROUGH
#define PASSTHROUGH 0
#endif

static struct ag__alloc_stats stats(void)
{
	struct ag__alloc_stats st;

	ag__alloc_stats(&st);
	return st;
}

/* Big tensors freed by a forward stay cached until ag_trim. */
Test(trim, big_blocks_go_back)
{
	struct ag__alloc_stats st;
	int64_t n = 100000;
	size_t freed;

	ag_trim();
	for (int i = 0; i < 3; i++) {
		struct ag_scope *s = ag_scope_begin();
		struct ag_tensor *a = ag_ones(AG_F32, 1, &n);
		struct ag_tensor *b = ag_mul_scalar(ag_add_scalar(a, 1), 3);

		cr_assert_eq(ag_tensor_item(ag_sum(b)), 6.0 * (double)n);
		ag_scope_end(s);
	}
	AG_ASSERT_NO_LEAKS();
	st = stats();
	if (PASSTHROUGH) {
		cr_assert_eq(st.big_global_bytes + st.big_thread_bytes, 0);
		cr_assert_eq(ag_trim(), 0);
		return;
	}
	/* three 400 KB storages were live at once: all three are cached */
	cr_assert_geq(st.big_global_bytes + st.big_thread_bytes,
		      3 * (size_t)n * 4);
	freed = ag_trim();
	cr_assert_geq(freed, 3 * (size_t)n * 4);
	st = stats();
	cr_assert_eq(st.big_global_bytes, 0);
	cr_assert_eq(st.big_thread_bytes, 0);
	cr_assert_eq(st.depot_empty_mags, 0);
}

/* A thread's own big-block cache keeps its bound. */
Test(trim, thread_cache_is_bounded)
{
	void *p[64];

	ag_trim();
	for (int i = 0; i < 64; i++)
		cr_assert_not_null(p[i] = ag__alloc(8192));
	for (int i = 0; i < 64; i++)
		ag__free(p[i]);
	if (PASSTHROUGH)
		return;
	/* AG__BIG_TC_PER_CLASS blocks per class in the thread, the rest
	 * globally */
	cr_assert_leq(stats().big_thread_bytes, AG__BIG_TC_PER_CLASS * 8192);
	cr_assert_geq(stats().big_global_bytes,
		      (64 - AG__BIG_TC_PER_CLASS) * 8192);
	ag_trim();
	cr_assert_eq(stats().big_thread_bytes + stats().big_global_bytes, 0);
}

static pthread_barrier_t bar;
static size_t other_before, other_after;

/* Caches big blocks, waits for the main thread's ag_trim, allocates. */
static void *other_thread(void *arg)
{
	void *p[3], *q;

	(void)arg;
	for (int i = 0; i < 3; i++)
		p[i] = ag__alloc(16384);
	for (int i = 0; i < 3; i++)
		ag__free(p[i]);
	other_before = stats().big_thread_bytes;
	pthread_barrier_wait(&bar);
	pthread_barrier_wait(&bar); /* the main thread trims between */
	q = ag__alloc(100);
	ag__free(q);
	q = ag__alloc(3000);
	other_after = stats().big_thread_bytes;
	ag__free(q);
	return NULL;
}

/* Another thread empties its big cache at its next use after ag_trim. */
Test(trim, other_threads_follow)
{
	pthread_t t;

	pthread_barrier_init(&bar, NULL, 2);
	cr_assert_eq(pthread_create(&t, NULL, other_thread, NULL), 0);
	pthread_barrier_wait(&bar);
	ag_trim();
	pthread_barrier_wait(&bar);
	pthread_join(t, NULL);
	pthread_barrier_destroy(&bar);
	if (PASSTHROUGH)
		return;
	cr_assert_eq(other_before, 3 * 16384);
	cr_assert_eq(other_after, 0);
	ag_trim();
}

#define NSMALL 20000
static void *small[NSMALL];

/* Makes 20000 small blocks (about 1.3 MB of slabs), frees them, exits. */
static void *small_thread(void *arg)
{
	(void)arg;
	for (int i = 0; i < NSMALL; i++) {
		small[i] = ag__alloc(40);
		if (small[i])
			memset(small[i], 0x5a, 40);
	}
	for (int i = 0; i < NSMALL; i++)
		ag__free(small[i]);
	return NULL;
}

/* Slabs all of whose blocks are free are unmapped; the rest still work. */
Test(trim, free_slabs_are_unmapped)
{
	struct ag__alloc_stats st0, st1, st2;
	pthread_t t;
	void *p[1000];

	ag_trim();
	st0 = stats();
	cr_assert_eq(pthread_create(&t, NULL, small_thread, NULL), 0);
	pthread_join(t, NULL);
	st1 = stats();
	if (PASSTHROUGH) {
		cr_assert_eq(st1.slabs, 0);
		return;
	}
	/* 20000 blocks of 64 bytes fill at least 4 slabs of 256 KiB */
	cr_assert_geq(st1.slabs, st0.slabs + 4);
	cr_assert_geq(st1.depot_blocks, st0.depot_blocks + NSMALL);
	cr_assert_geq(ag_trim(), 4 * ((size_t)256 << 10));
	st2 = stats();
	cr_assert_leq(st2.slabs, st0.slabs);
	cr_assert_leq(st2.depot_blocks, st0.depot_blocks);
	/* what is left hands out distinct, writable blocks */
	for (int i = 0; i < 1000; i++) {
		cr_assert_not_null(p[i] = ag__alloc(40));
		memset(p[i], i & 0xff, 40);
	}
	for (int i = 0; i < 1000; i++) {
		cr_assert_eq(((unsigned char *)p[i])[39], i & 0xff);
		ag__free(p[i]);
	}
}

/*
 * ag_grad with respect to the input only computes no weight gradient
 * (torch's should_compute_output): the 4 MB gradient of W is never
 * allocated, so no block that big reaches the allocator's cache.  dx is
 * checked by hand: d sum(x W^T + b) / dx = the column sums of W.
 */
Test(trim, grad_skips_unwanted_weight_grads)
{
	int64_t ws[2] = { 1000, 1000 }, xs[2] = { 1, 1000 }, bs = 1000;
	struct ag_scope *s = ag_scope_begin();
	struct ag_generator *g = ag_generator_new(5);
	struct ag_tensor *w = ag_rand(g, AG_F32, 2, ws);
	struct ag_tensor *b = ag_zeros(AG_F32, 1, &bs);
	struct ag_tensor *x = ag_rand(g, AG_F32, 2, xs);
	struct ag_tensor *y, *gx = NULL, *want;
	struct ag__alloc_stats st;
	float got[1000], ref[1000];

	cr_assert_eq(ag_tensor_set_requires_grad(w, true), 0);
	cr_assert_eq(ag_tensor_set_requires_grad(b, true), 0);
	cr_assert_eq(ag_tensor_set_requires_grad(x, true), 0);
	y = ag_sum(ag_linear(x, w, b));
	ag_trim();
	cr_assert_eq(ag_grad(&y, NULL, 1, &x, 1, &gx, NULL), 0);
	st = stats();
	if (!PASSTHROUGH)
		cr_assert_lt(st.big_global_bytes + st.big_thread_bytes,
			     (size_t)4000000,
			     "a weight gradient was computed: %zu bytes cached",
			     st.big_global_bytes + st.big_thread_bytes);
	want = ag_sum_dim(w, 0, false);
	cr_assert_eq(ag_tensor_copy_to(gx, got, sizeof(got)), 0);
	cr_assert_eq(ag_tensor_copy_to(want, ref, sizeof(ref)), 0);
	for (int i = 0; i < 1000; i++)
		cr_assert_float_eq(got[i], ref[i],
				   1e-3f * fabsf(ref[i]) + 1e-4f);
	cr_assert_null(ag_tensor_grad(w));
	ag_generator_free(g);
	ag_scope_end(s);
	AG_ASSERT_NO_LEAKS();
}

/* ---- an ag_gate place's cache (ag__big_cache) ---- */

struct holder {
	struct ag_gate *g;
	void *p;
	int rc;
};

/* Takes a place, allocates a big block, gives both back. */
static void *alloc_at_place(void *arg)
{
	struct holder *h = arg;

	h->rc = ag_gate_enter(h->g);
	h->p = ag__alloc(8192);
	ag__free(h->p);
	h->rc |= ag_gate_leave(h->g);
	return NULL;
}

/*
 * The holders of a place share its big blocks: what one frees, the next
 * one gets, though it is another thread and the first is still alive
 * with a cache of its own.
 */
Test(trim, gate_place_keeps_big_blocks)
{
	struct ag_gate *g = ag_gate_new(1, 0);
	struct holder a = { .g = g }, b = { .g = g };
	pthread_t th;
	void *own;

	cr_assert_not_null(g);
	ag_trim();
	alloc_at_place(&a); /* this thread, which lives on */
	cr_assert_eq(a.rc, 0);
	cr_assert_eq(pthread_create(&th, NULL, alloc_at_place, &b), 0);
	pthread_join(th, NULL);
	cr_assert_eq(b.rc, 0);
	own = ag__alloc(8192); /* outside the gate: this thread's own */
	ag__free(own);
	cr_assert_eq(ag_gate_free(g), 0);
	if (PASSTHROUGH)
		return;
	cr_assert_eq(b.p, a.p, "the second holder got another block");
	cr_assert_neq(own, a.p, "the place's block was in the thread's cache");
	ag_trim();
	cr_assert_eq(stats().big_thread_bytes + stats().big_global_bytes, 0);
}

/* Each allocation ag_gate_new makes can fail: NULL and AG_ENOMEM. */
Test(trim, gate_new_out_of_memory)
{
	long n;
	struct ag_gate *g;

	ag__fault_set(0, false);
	g = ag_gate_new(4, 0);
	n = ag__fault_count();
	ag__fault_set(-1, false);
	cr_assert_not_null(g);
	cr_assert_eq(ag_gate_free(g), 0);
	cr_assert_geq(n, 3); /* the gate, its free list, its caches */
	for (long k = 1; k <= n; k++) {
		ag__fault_set(k, false);
		g = ag_gate_new(4, 0);
		ag__fault_set(-1, false);
		cr_assert_null(g, "allocation %ld of %ld failed", k, n);
		cr_assert_eq(ag_errcode(), AG_ENOMEM);
	}
}
