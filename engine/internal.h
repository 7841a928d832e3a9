/* SPDX-License-Identifier: MIT */
#ifndef AG_ENGINE_INTERNAL_H
#define AG_ENGINE_INTERNAL_H

/*
 * Internal definitions shared by engine/.  Nothing here is exported from the
 * shared library; tests link the static library and may include it.
 */
#include <stdatomic.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <ag/error.h>
#include <ag/tensor.h>

#include "alloc.h"
#include "lib/list.h"

#define ag_container_of(ptr, type, member) \
	((type *)((char *)(ptr)-offsetof(type, member)))

/*
 * x86-64's (and most arm64 parts') cache line: the unit of false sharing
 * that per-thread fields are padded to, and the step of prefetch spans.
 */
#define AG_CACHE_LINE 64
/* Storage data and slabs start on a line (engine/storage.c says why). */
#define AG_ALIGN AG_CACHE_LINE

/*
 * Thread-local state read on every op.  The default model for a shared
 * library calls __tls_get_addr on each access (7% of a small-tensor chain's
 * instructions); initial-exec is one %fs-relative load.  It draws on the
 * static TLS surplus when libag is dlopen()ed, so only small variables use
 * it; the error message buffer stays on the default model.
 */
#define AG_TLS _Thread_local __attribute__((tls_model("initial-exec")))

/*
 * For a function made of prefetches.  GCC counts __builtin_prefetch as
 * free of side effects, so it finds such a function pure and deletes
 * calls to it before it would inline them; forced inlining keeps them.
 */
#define AG_PREFETCH_FN static inline __attribute__((always_inline)) void

/*
 * Starts loading every cache line of [p, p + bytes), for writing when rw
 * is 1.  A macro: __builtin_prefetch takes rw only as a constant.
 */
#define ag__prefetch_span(p, bytes, rw)                           \
	do {                                                      \
		uintptr_t a_ = (uintptr_t)(p) &                   \
			       ~(uintptr_t)(AG_CACHE_LINE - 1);   \
		uintptr_t e_ = (uintptr_t)(p) + (bytes);          \
                                                                  \
		for (; a_ < e_; a_ += AG_CACHE_LINE)              \
			__builtin_prefetch((const void *)a_, rw); \
	} while (0)

/* ---- errors (engine/error.c) ---- */

/* Sets the thread's error; returns -code so callers can `return ag__err()`. */
int ag__err(int code, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
int ag__verr(int code, const char *fmt, va_list ap);
/*
 * Counts the errors ever set on this thread (not cleared by
 * ag_clear_error): a change across a callback means it set one.
 */
unsigned ag__err_seq(void);
/*
 * For an op given a NULL tensor: keeps an error that is already set (the
 * one that produced the NULL), else sets AG_EINVAL naming the argument.
 */
int ag__err_null(const char *fn, const char *arg);
/*
 * The error a callee that failed has set, as -code: what a caller returns
 * when it only passes a failure on.
 */
int ag__err_last(void);
/*
 * For a failure the caller recovers from (an allocation with a slower
 * fallback that still succeeds): before is ag_errcode() from before the
 * attempt.  If no error was set then, the recovered one is cleared, so a
 * user who cleared the error and got success reads none.
 */
void ag__err_recovered(int before);

/* ---- live-object counters (tests assert they return to zero) ---- */

enum ag_live_kind {
	AG_LIVE_TENSORS,
	AG_LIVE_STORAGES,
	AG_LIVE_BYTES,
	AG_LIVE_NODES,
	AG_LIVE_HOOKS,
	AG_LIVE_KINDS
};

/* One thread's counts (engine/live.c); a sum over threads is the total. */
struct ag_live_counts {
	atomic_long n[AG_LIVE_KINDS];
	bool registered;
	struct ag__list link; /* in live.c's list, under its lock */
};
extern AG_TLS struct ag_live_counts ag__live_tls;
void ag__live_register(struct ag_live_counts *c);
long ag__live_sum(enum ag_live_kind k);

/* Counts v more of kind k on this thread: no locked instruction. */
static inline void ag__live_add(enum ag_live_kind k, long v)
{
	struct ag_live_counts *c = &ag__live_tls;

	if (__builtin_expect(!c->registered, 0))
		ag__live_register(c);
	atomic_store_explicit(
		&c->n[k],
		atomic_load_explicit(&c->n[k], memory_order_relaxed) + v,
		memory_order_relaxed);
}

static inline long ag__live_tensors(void)
{
	return ag__live_sum(AG_LIVE_TENSORS);
}

static inline long ag__live_storages(void)
{
	return ag__live_sum(AG_LIVE_STORAGES);
}

static inline long ag__live_bytes(void)
{
	return ag__live_sum(AG_LIVE_BYTES);
}

static inline long ag__live_nodes(void)
{
	return ag__live_sum(AG_LIVE_NODES);
}

static inline long ag__live_hooks(void)
{
	return ag__live_sum(AG_LIVE_HOOKS);
}

/* ---- storage ---- */

/*
 * The bytes behind one or more tensors.  The version counter lives here so
 * every view and every detached alias sees the same count.  last_writer
 * names the in-place op that bumped it last, for the version error message.
 */
struct ag_storage {
	atomic_long refcount;
	void *data;
	size_t nbytes;
	void (*free_fn)(void *data, void *arg); /* from_blob only */
	void *free_arg;
	bool user_owned; /* from_blob: free_fn, not free() */
	bool inference; /* no version tracking */
	/*
	 * Bytes back from the storage to the start of the block it shares
	 * with its first tensor (that tensor's header and geometry); 0: the
	 * storage starts its own block.
	 */
	uint16_t block_off;
	atomic_uint_least64_t version;
	const char *_Atomic last_writer;
};
_Static_assert(sizeof(struct ag_storage) == 64,
	       "struct ag_storage is one cache line");

struct ag_storage *ag__storage_new(size_t nbytes);
/*
 * Bytes a storage of nbytes takes in one block, header and data, the data
 * aligned as ag__storage_init places it; 0 on overflow.  The header must
 * start 8-byte aligned (it always is: it holds pointers).
 */
size_t ag__storage_bytes(size_t nbytes);
/*
 * Initialises a storage in mem (ag__storage_bytes(nbytes) long).  Its data
 * is aligned to AG_ALIGN when nbytes >= AG_ALIGN, else to the smallest
 * power of two >= nbytes and at least 16: a small tensor's data follows its
 * header closely.  block_off: mem is block_off bytes into a block that
 * starts with a struct ag_tensor and its geometry, and the block is freed
 * with the storage, whichever of the two goes last; 0: mem is a block of
 * its own.
 */
struct ag_storage *ag__storage_init(void *mem, size_t nbytes, size_t block_off);
void ag__storage_get(struct ag_storage *s);
void ag__storage_put(struct ag_storage *s);
/* Bumps the version after an in-place write by op `who`. */
void ag__storage_bump(struct ag_storage *s, const char *who);

/* ---- tensors ---- */

struct ag_node;
struct ag_grad_cell;
struct ag_k_gemm_pack;

/*
 * Per-tensor state few tensors have, allocated when first needed and freed
 * with the tensor, so that the header every tensor carries stays small.
 * Today the weight packed for ag_linear; the place for what comes later
 * (forward-mode tangents, quantisation parameters).
 */
struct ag_tensor_ext {
	/* ag_linear_prepack's pack, used while the storage's version is
	 * still pack_version */
	struct ag_k_gemm_pack *pack;
	uint64_t pack_version;
	/*
	 * Frees pack.  Set by engine/ops/linear.c with the pack rather than
	 * called from here, so that a static program that never packs does
	 * not link the GEMM code: that loads OpenBLAS, whose threads spin
	 * for a while at start-up and whose TLS leaves no room on a 64 KiB
	 * stack (tests/pool's idle test and tests/reliability/scale.c
	 * caught both).
	 */
	void (*pack_free)(struct ag_k_gemm_pack *p);
};

/* Autograd state of a tensor, used by engine/autograd. */
struct ag_autograd_meta {
	bool requires_grad; /* leaves; non-leaves require grad iff grad_fn */
	bool retains_grad;
	int output_nr;
	struct ag_node *grad_fn; /* strong; NULL for leaves */
	struct ag_node *_Atomic grad_acc; /* leaf's AccumulateGrad, strong */
	struct ag_grad_cell *_Atomic cell; /* .grad */
	/* differentiable views: the base whose storage this one shares */
	struct ag_tensor *view_base;
};

/*
 * The geometry is set when a tensor is made and never changes, so it is
 * sized by ndim: shape and strides point into geom, which holds ndim sizes
 * then ndim strides.  Entries past ndim do not exist; code that keeps a
 * shape in a fixed AG_MAX_DIMS array copies ndim of them (ag__dims_copy).
 */
struct ag_tensor {
	atomic_long refcount;
	enum ag_dtype dtype;
	int ndim;
	bool inference;
	int64_t numel;
	int64_t offset; /* in elements, into storage */
	int64_t *shape; /* geom */
	int64_t *strides; /* geom + ndim */
	struct ag_storage *storage;
	struct ag_autograd_meta *meta; /* NULL: plain tensor, no autograd state */
	char *name;
	struct ag_tensor_ext *ext; /* rarely used state, or NULL */
	/* meta points here once set: one block less per recorded output */
	struct ag_autograd_meta meta_store;
	int64_t geom[]; /* 2 * ndim */
};

/* the in-block storage's offset fits its block_off; it starts 8-aligned */
_Static_assert(sizeof(struct ag_tensor) + 2 * AG_MAX_DIMS * sizeof(int64_t) <=
		       UINT16_MAX,
	       "block_off holds the largest tensor header");
_Static_assert(sizeof(struct ag_tensor) % _Alignof(struct ag_storage) == 0,
	       "a storage after a tensor header is aligned");

/*
 * Drops what a tensor's autograd state holds (the state lives in the
 * tensor).  Defined in autograd/, which owns what meta points to; the one
 * call from core upward, made when a tensor is freed.
 */
void ag__meta_clear(struct ag_autograd_meta *m);

/* Leaves that asked for it, and every tensor with a grad_fn. */
static inline bool ag__requires_grad(const struct ag_tensor *t)
{
	return t->meta && (t->meta->requires_grad || t->meta->grad_fn);
}

/* Bytes of a tensor header with the geometry of ndim dims. */
static inline size_t ag__tensor_bytes(int ndim)
{
	return sizeof(struct ag_tensor) + 2 * (size_t)ndim * sizeof(int64_t);
}

/*
 * Copies ndim sizes (or strides) into a fixed array of AG_MAX_DIMS and zeroes
 * the rest, so that the array is the same whatever follows the source.
 */
static inline void ag__dims_copy(int64_t *dst, const int64_t *src, int ndim)
{
	/* a fixed-size clear is a few vector stores; then ndim copies */
	__builtin_memset(dst, 0, AG_MAX_DIMS * sizeof(int64_t));
	for (int d = 0; d < ndim; d++)
		dst[d] = src[d];
}

/*
 * Equal shapes of n dims.  Shapes are a few dims; a loop the compiler
 * inlines beats a call to memcmp on every op and every gradient.
 */
static inline bool ag__shape_eq(int n, const int64_t *a, const int64_t *b)
{
	for (int i = 0; i < n; i++)
		if (a[i] != b[i])
			return false;
	return true;
}

static inline void *ag__data(const struct ag_tensor *t)
{
	return (char *)t->storage->data + t->offset * ag_dtype_size(t->dtype);
}

/*
 * True when no one but the holder of this one reference can see t: the
 * engine may then write into it or take it over (contiguous, plain,
 * storage unshared).
 */
static inline bool ag__exclusive(const struct ag_tensor *t)
{
	return atomic_load_explicit(&t->refcount, memory_order_acquire) == 1 &&
	       atomic_load_explicit(&t->storage->refcount,
				    memory_order_acquire) == 1 &&
	       !t->meta && ag_tensor_is_contiguous(t);
}

/*
 * The element count of a shape of sizes >= 0 (0 when any size is 0) and,
 * when nbytes is not NULL, its byte size in dt: 0, or -AG_EINVAL when
 * either overflows (the byte size must fit size_t and int64_t).  The one
 * overflow check of everything that sizes a tensor: views pass no nbytes
 * (they allocate nothing; an expand of one element to 2^61 f64 elements
 * is valid), allocations do.  fn, when not NULL, prefixes the message.
 */
int ag__shape_size(const char *fn, int ndim, const int64_t *shape,
		   enum ag_dtype dt, int64_t *numel, size_t *nbytes);
/*
 * Checks dtype, dims and shape and computes the element count with
 * ag__shape_size (the byte size must fit too).  fn names the caller for
 * the message.  Returns 0 or -AG_EINVAL (-AG_EDTYPE for a bad dtype).
 */
int ag__check_shape(const char *fn, int ndim, const int64_t *shape,
		    enum ag_dtype dt, int64_t *numel);
int ag__check_dtype(const char *fn, enum ag_dtype dt);
/*
 * A shape as text for an error message, "[3, 5]": room for AG_MAX_DIMS
 * dims of 20 characters each (INT64_MIN) with their separators, so no
 * shape is ever cut short.  Declared where the message is built.
 */
struct ag__shape_str {
	char s[3 + AG_MAX_DIMS * 22];
};
/* Formats the shape into b and returns b->s. */
const char *ag__shape_fmt(struct ag__shape_str *b, int ndim,
			  const int64_t *shape);
/*
 * The product of shape[from..to) of an existing tensor's shape.  Only a
 * shape with a 0 elsewhere can hold dims whose product overflows ([0,
 * 2^40, 2^40] holds nothing): the product is 0 then, so loops over the
 * range do nothing, which is right for a tensor with no elements.
 */
int64_t ag__dims_prod(int ndim, const int64_t *shape, int from, int to);
/* ag__shape_fmt of t's shape */
const char *ag__shape_of(struct ag__shape_str *b, const struct ag_tensor *t);

/*
 * A new tensor of the given shape with fresh contiguous storage, not
 * recorded in a scope.  Marked inference when inference mode is on.
 */
struct ag_tensor *ag__tensor_new(const char *fn, enum ag_dtype dt, int ndim,
				 const int64_t *shape);
/*
 * A new contiguous tensor of t's dtype and shape; NULL with AG_EINVAL when
 * its byte size overflows (t may be an expanded view of a huge shape).
 */
struct ag_tensor *ag__tensor_like(const struct ag_tensor *t);
/*
 * A new tensor header over s (a reference is taken) with the given geometry;
 * plain (no autograd meta), not recorded in a scope.  NULL with AG_EINVAL
 * when the element count of shape overflows.
 */
struct ag_tensor *ag__tensor_view(struct ag_tensor *base, int ndim,
				  const int64_t *shape, const int64_t *strides,
				  int64_t offset);
/*
 * A new plain tensor over all of storage s (a reference is taken), dense,
 * of a dtype and shape that fill it exactly.
 */
struct ag_tensor *ag__tensor_on(struct ag_storage *s, enum ag_dtype dt,
				int ndim, const int64_t *shape);
void ag__contiguous_strides(int ndim, const int64_t *shape, int64_t *strides);
/* Dense row-major copy of any layout into dst (numel elements). */
void ag__copy_dense(const struct ag_tensor *t, void *dst);
/* Storage offset of element i (row-major logical index) of t. */
int64_t ag__elem_offset(const struct ag_tensor *t, int64_t i);
/* Element i (row-major logical index) of t as a double. */
double ag__get(const struct ag_tensor *t, int64_t i);

/*
 * Returning a reference to the user: records it in the innermost open scope
 * of this thread, if any.  Every public function that returns a new tensor
 * reference passes it through here.
 */
struct ag_tensor *ag__scope_add(struct ag_tensor *t);
/*
 * Threads with a scope open (scope.c): a service's request threads each
 * hold one per request, so this says how many are busy in libag, in a
 * parallel call or not.  The pool runs a parallel call inline when they
 * fill it (ag_parallel_for).
 */
extern atomic_int ag__scoped_threads;
/* In a fork()'s child: only the forking thread's scope, if any, is open. */
void ag__scope_atfork_child(void);

/* ---- modes (engine/mode.c) ---- */

struct ag_tls_mode {
	bool grad;
	int inference;
	bool anomaly;
};
extern AG_TLS struct ag_tls_mode ag__mode;

/* ---- walking strided operands row by row (engine/walk.c) ---- */

#define AG_WALK_MAX_OPS 4

/*
 * Visits the rows of the innermost dim of a shape for up to four operands
 * with their own strides (0 = broadcast).  After ag__walk_init, each
 * ag__walk_next() call that returns true sets off[k] to the element offset
 * of the row start of operand k; a row has `inner` elements at strides
 * inc[k].  Dims of size 1 and 0-d shapes are handled; an empty shape visits
 * nothing.
 */
struct ag_walk {
	int ndim; /* outer dims */
	int nop;
	bool started;
	bool empty;
	int64_t inner;
	int64_t inc[AG_WALK_MAX_OPS];
	int64_t off[AG_WALK_MAX_OPS];
	int64_t base[AG_WALK_MAX_OPS];
	int64_t idx[AG_MAX_DIMS];
	int64_t shape[AG_MAX_DIMS];
	int64_t strides[AG_WALK_MAX_OPS][AG_MAX_DIMS];
};

void ag__walk_init(struct ag_walk *w, int ndim, const int64_t *shape, int nop,
		   const int64_t *const *strides, const int64_t *base);
bool ag__walk_next(struct ag_walk *w);

/*
 * Library code that calls public ops internally (backward formulas, custom
 * function forward) suspends the thread's scope so its temporaries are not
 * recorded in the user's scope.
 */
struct ag_scope;
struct ag_scope *ag__scope_suspend(void);
void ag__scope_resume(struct ag_scope *s);
/* References a scope holds (tests: which results went where). */
size_t ag__scope_count(const struct ag_scope *s);
struct ag_tensor *ag__contiguous_copy(struct ag_tensor *t);

#endif /* AG_ENGINE_INTERNAL_H */
