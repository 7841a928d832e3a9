// SPDX-License-Identifier: MIT
/*
 * The generator: SplitMix64 expands the seed into xoshiro256** state.
 * Both are fixed integer algorithms, so a seed gives the same bits on every
 * platform; see ag/tensor.h for how bits become floats.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

struct ag_generator {
	uint64_t s[4];
};

static uint64_t splitmix64(uint64_t *x)
{
	uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

uint64_t ag_generator_next(struct ag_generator *g)
{
	uint64_t *s = g->s;
	uint64_t r = rotl(s[1] * 5, 7) * 9;
	uint64_t t = s[1] << 17;

	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = rotl(s[3], 45);
	return r;
}

struct ag_generator *ag_generator_new(uint64_t seed)
{
	struct ag_generator *g = ag__malloc(sizeof(*g));

	if (!g)
		return NULL;
	for (int i = 0; i < 4; i++)
		g->s[i] = splitmix64(&seed);
	return g;
}

void ag_generator_free(struct ag_generator *g)
{
	ag__mfree(g);
}

int ag_generator_get_state(const struct ag_generator *g,
			   uint64_t st[AG_GENERATOR_STATE_WORDS])
{
	if (!g || !st)
		return ag_set_error(AG_EINVAL,
				    "ag_generator_get_state: %s is NULL",
				    g ? "st" : "generator");
	memcpy(st, g->s, sizeof(g->s));
	return 0;
}

int ag_generator_set_state(struct ag_generator *g,
			   const uint64_t st[AG_GENERATOR_STATE_WORDS])
{
	if (!g || !st)
		return ag_set_error(AG_EINVAL,
				    "ag_generator_set_state: %s is NULL",
				    g ? "st" : "generator");
	if (!(st[0] | st[1] | st[2] | st[3]))
		return ag_set_error(
			AG_EINVAL,
			"ag_generator_set_state: the all-zero state is not one xoshiro256** can be in");
	memcpy(g->s, st, sizeof(g->s));
	return 0;
}

static double uniform53(struct ag_generator *g)
{
	return (double)(ag_generator_next(g) >> 11) * 0x1p-53;
}

static struct ag_tensor *random_tensor(const char *fn, struct ag_generator *g,
				       enum ag_dtype dt, int ndim,
				       const int64_t *shape, bool normal)
{
	struct ag_tensor *t;

	if (!g) {
		ag__err(AG_EINVAL, "%s: generator is NULL", fn);
		return NULL;
	}
	if (dt == AG_I64) {
		ag__err(AG_EDTYPE,
			"%s: random values need a floating dtype (f32 or f64), not i64",
			fn);
		return NULL;
	}
	t = ag__tensor_new(fn, dt, ndim, shape);
	if (!t)
		return NULL;
	for (int64_t i = 0; i < t->numel; i++) {
		double v;

		if (normal) {
			double u1 = uniform53(g), u2 = uniform53(g);

			v = sqrt(-2.0 * log(1.0 - u1)) * cos(2.0 * M_PI * u2);
		} else if (dt == AG_F32) {
			v = (double)(ag_generator_next(g) >> 40) * 0x1p-24;
		} else {
			v = uniform53(g);
		}
		if (dt == AG_F32)
			((float *)t->storage->data)[i] = (float)v;
		else
			((double *)t->storage->data)[i] = v;
	}
	return ag__scope_add(t);
}

struct ag_tensor *ag_rand(struct ag_generator *g, enum ag_dtype dt, int ndim,
			  const int64_t *shape)
{
	return random_tensor("ag_rand", g, dt, ndim, shape, false);
}

struct ag_tensor *ag_randn(struct ag_generator *g, enum ag_dtype dt, int ndim,
			   const int64_t *shape)
{
	return random_tensor("ag_randn", g, dt, ndim, shape, true);
}

/*
 * The default generators: one per thread, so drawing needs no lock.  Each
 * restarts from the seed of ag_manual_seed() when it sees a newer epoch.
 */
static atomic_uint_least64_t default_seed = 67280421310721ULL;
static atomic_uint_least64_t seed_epoch = 1;
static _Thread_local struct ag_generator default_gen;
static _Thread_local uint64_t default_epoch; /* 0: never seeded */

void ag_manual_seed(uint64_t seed)
{
	atomic_store_explicit(&default_seed, seed, memory_order_relaxed);
	atomic_fetch_add_explicit(&seed_epoch, 1, memory_order_release);
}

struct ag_generator *ag_default_generator(void)
{
	uint64_t e = atomic_load_explicit(&seed_epoch, memory_order_acquire);

	if (e != default_epoch) {
		uint64_t seed = atomic_load_explicit(&default_seed,
						     memory_order_relaxed);

		for (int i = 0; i < 4; i++)
			default_gen.s[i] = splitmix64(&seed);
		default_epoch = e;
	}
	return &default_gen;
}
