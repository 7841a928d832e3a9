/* SPDX-License-Identifier: MIT */
#ifndef AG_EXAMPLES_FMNIST_H
#define AG_EXAMPLES_FMNIST_H

/*
 * Fashion-MNIST from its IDX files (gzip'd, as Debian's
 * dataset-fashion-mnist installs them in FMNIST_DIR): images kept as
 * bytes and normalised per batch
 * with torch's usual mean and std, (x / 255 - 0.2860) / 0.3530, labels
 * 0..9, a seeded shuffle per epoch and batches of [B, 1, 28, 28] f32
 * images with [B] i64 labels.
 */
#include <stdbool.h>
#include <stdint.h>

#include <ag/tensor.h>

#define FMNIST_DIR "/usr/share/datasets/fashion-mnist"
#define FMNIST_SIDE 28
#define FMNIST_PIXELS (FMNIST_SIDE * FMNIST_SIDE)
#define FMNIST_MEAN 0.2860
#define FMNIST_STD 0.3530

struct fmnist {
	int64_t n;
	/*
	 * n * FMNIST_PIXELS bytes as in the files, normalised per batch
	 * through norm: a quarter of the floats' memory, so a random batch
	 * reads from a set that stays in memory and in the TLB's reach
	 */
	unsigned char *pixels;
	float norm[256]; /* a pixel value's normalised float */
	int64_t *labels; /* n */
	int64_t *order; /* this epoch's permutation of [0, n) */
	int rank, world; /* fmnist_shard(); world 0 or 1: the whole set */
	char errmsg[256]; /* why the last call failed */
};

/*
 * Loads the training (60000) or test (10000) set from dir (NULL:
 * FMNIST_DIR); 0, or -1 with d->errmsg saying what is wrong (a missing,
 * truncated or corrupt file, bad magic numbers or sizes).  d holds nothing
 * to free after a failure.
 */
int fmnist_load(struct fmnist *d, const char *dir, bool train);
/* Loads the pair of files given by path (for tests of corrupt files). */
int fmnist_load_files(struct fmnist *d, const char *images, const char *labels);
void fmnist_free(struct fmnist *d);
/* A new permutation of 0..n-1, a function of g alone (Fisher-Yates). */
void fmnist_shuffle(struct fmnist *d, struct ag_generator *g);
/*
 * A distributed sampler, as torch's DistributedSampler: from now on the
 * batches come from rank's share of each epoch's order, every world-th
 * position from rank, the order padded by wrapping around to a multiple
 * of world.  So every rank has ceil(n / world) images and as many
 * batches, and ranks that shuffle with the same seed hold disjoint shares
 * that cover the epoch.  0, or -1 if rank is not in [0, world).
 */
int fmnist_shard(struct fmnist *d, int rank, int world);
/* This rank's images per epoch. */
int64_t fmnist_len(const struct fmnist *d);
/* Batches per epoch: the last one may be short, as torch's drop_last=False. */
int64_t fmnist_batches(const struct fmnist *d, int64_t batch);
/* Batch i of size batch in the current order; new tensors or -1. */
int fmnist_batch(struct fmnist *d, int64_t i, int64_t batch,
		 struct ag_tensor **x, struct ag_tensor **y);

struct ag_module;
/*
 * The example's models, by name, with weights drawn from g: "mlp"
 * (784-512-512-10, ReLU, dropout 0.2) or "cnn" (conv 1->32 3x3 pad 1,
 * ReLU, maxpool 2, conv 32->64 3x3 pad 1, BatchNorm2d, ReLU, maxpool 2,
 * linear 3136->128, ReLU, linear 128->10).  NULL for another name or
 * with libag's error set.
 */
struct ag_module *fmnist_model(const char *name, struct ag_generator *g);

#endif /* AG_EXAMPLES_FMNIST_H */
