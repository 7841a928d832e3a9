/* SPDX-License-Identifier: MIT */
#ifndef AG_EXAMPLES_FMNIST_MODELS_H
#define AG_EXAMPLES_FMNIST_MODELS_H

#include <stdint.h>

struct ag_generator;
struct ag_module;

/*
 * The CNN of the Fashion-MNIST example and of ag-bench's dist workload,
 * on [N, 1, hw, hw] images (hw a multiple of 4): conv 1->32 3x3 pad 1,
 * ReLU, maxpool 2, conv 32->64 3x3 pad 1, BatchNorm2d, ReLU, maxpool 2,
 * linear 64 (hw/4)^2 -> 128, ReLU, linear 128->10; weights drawn from g.
 * Only libag, no zlib: the benchmark links it without the data loader.
 */
struct ag_module *fmnist_cnn(int64_t hw, struct ag_generator *g);

#endif /* AG_EXAMPLES_FMNIST_MODELS_H */
