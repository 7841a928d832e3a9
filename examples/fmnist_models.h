/* SPDX-License-Identifier: MIT */
#ifndef AG_EXAMPLES_FMNIST_MODELS_H
#define AG_EXAMPLES_FMNIST_MODELS_H

#include <stdint.h>

/*
 * The Fashion-MNIST example's models.  Only libag, no zlib: ag-bench and
 * the serve test link them without the data loader.  Each returns NULL
 * with libag's error set when a layer cannot be made.
 */
struct ag_generator;
struct ag_module;

/*
 * The MLP: 784-512-512-10, ReLU, dropout 0.2 (drawing from the thread's
 * default generator), weights drawn from g.
 */
struct ag_module *fmnist_mlp(struct ag_generator *g);

/*
 * The CNN, also ag-bench's dist workload's, on [N, 1, hw, hw] images (hw
 * a multiple of 4): conv 1->32 3x3 pad 1, ReLU, maxpool 2, conv 32->64
 * 3x3 pad 1, BatchNorm2d, ReLU, maxpool 2, linear 64 (hw/4)^2 -> 128,
 * ReLU, linear 128->10; weights drawn from g.
 */
struct ag_module *fmnist_cnn(int64_t hw, struct ag_generator *g);

#endif /* AG_EXAMPLES_FMNIST_MODELS_H */
